"""Reading Go binaries (build info, symbols, DWARF, pclntab), for every collector that probes Go."""

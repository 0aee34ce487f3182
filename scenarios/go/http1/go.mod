module probebench/scenarios/http1

go 1.26

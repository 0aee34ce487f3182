/* The head every uprobe event (bpf/uprobe_events.h) starts with: its field lines, included
 * as the first lines of each event struct, so the head is written once and the records
 * keep their bytes. Not a struct of its own: as a member, its 76 bytes would be padded
 * to 80 (u64 alignment) and every field after it would move. No include guard: it is
 * included once per struct. harness/collectors/cstruct.py inlines it the same way. */
    u64 ts_ns;
    u64 conn;      /* the *net.netFD: names the connection within the process */
    u32 tgid;
    u32 tid;
    u32 stream_id;
    u8 kind;
    u8 probe;
    u8 role;
    u8 dir;
    u8 flags;
    u8 addr_status;
    u8 ip_len;     /* 4 or 16 */
    u8 pad;
    s32 fd;        /* poll.FD.Sysfd, -1 when unknown */
    u16 lport;
    u16 rport;
    u8 laddr[16];
    u8 raddr[16];

/*
 * One sender of the intake benchmark (bench/intake.py): a shim-like process that feeds the agent's
 * SOCK_SEQPACKET socket as fast as it takes records, so that the benchmark measures the intake and
 * not a slow sender.
 *
 *     intake_sender SOCKET RECORDS COUNT
 *
 * RECORDS is a file of records, each preceded by its length (u16, little-endian): the first is the
 * PROC_START, the others a pool of records sent round-robin. Each record's pid and tid (header
 * offsets 8 and 16) are replaced by this process's pid. The sender connects, sends the PROC_START,
 * waits for a line on stdin (the go signal), sends COUNT records from the pool with blocking
 * sendmmsg calls, and exits 0; it exits 1 with a message on any error.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define MAX_RECORDS 65536
#define BATCH 64

static void die(const char *what) {
    perror(what);
    exit(1);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: %s SOCKET RECORDS COUNT\n", argv[0]);
        return 1;
    }
    long count = atol(argv[3]);
    FILE *f = fopen(argv[2], "rb");
    if (!f) die("open records");
    static uint8_t data[MAX_RECORDS * 128];
    size_t size = fread(data, 1, sizeof data, f);
    fclose(f);

    static struct iovec records[MAX_RECORDS];
    size_t n = 0, off = 0;
    uint32_t pid = (uint32_t)getpid();
    while (off + 2 <= size && n < MAX_RECORDS) {
        size_t len = (size_t)data[off] | ((size_t)data[off + 1] << 8);
        off += 2;
        if (off + len > size || len < 20) {
            fprintf(stderr, "bad records file\n");
            return 1;
        }
        memcpy(data + off + 8, &pid, 4);
        memcpy(data + off + 16, &pid, 4);
        records[n].iov_base = data + off;
        records[n].iov_len = len;
        n++;
        off += len;
    }
    if (n < 2) {
        fprintf(stderr, "the records file needs a start record and a pool\n");
        return 1;
    }

    int fd = socket(AF_UNIX, SOCK_SEQPACKET, 0);
    if (fd < 0) die("socket");
    struct sockaddr_un addr = {.sun_family = AF_UNIX};
    strncpy(addr.sun_path, argv[1], sizeof addr.sun_path - 1);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) die("connect");
    if (send(fd, records[0].iov_base, records[0].iov_len, 0) < 0) die("send start");
    char line[16];
    if (!fgets(line, sizeof line, stdin)) die("read go");

    struct mmsghdr msgs[BATCH];
    size_t pool = n - 1, next = 0;
    while (count > 0) {
        unsigned want = count < BATCH ? (unsigned)count : BATCH;
        for (unsigned i = 0; i < want; i++) {
            memset(&msgs[i], 0, sizeof msgs[i]);
            msgs[i].msg_hdr.msg_iov = &records[1 + (next + i) % pool];
            msgs[i].msg_hdr.msg_iovlen = 1;
        }
        int sent = sendmmsg(fd, msgs, want, 0);
        if (sent < 0) {
            if (errno == EINTR) continue;
            die("sendmmsg");
        }
        next = (next + (size_t)sent) % pool;
        count -= sent;
    }
    close(fd);
    return 0;
}

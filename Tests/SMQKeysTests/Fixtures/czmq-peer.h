// A tiny CZMQ program the interop tests compile at test time, so certificates are written and
// read by the real zcert_save / zcert_load (Debian's libczmq), not by our idea of them.
//
//   czmq-peer write DIR NAME [META-NAME META-VALUE]...   zcert_save(DIR/NAME): DIR/NAME, DIR/NAME_secret
//   czmq-peer read FILE                                   zcert_load(FILE), which tries FILE_secret first
//
// It is kept as a .h file only because SwiftPM refuses .c files in a Swift target (mixed
// languages) and warns about unknown extensions, while it ignores headers; the tests compile it
// with `cc -x c`.
//
// Both print "public=<z85>", "secret=<z85>" and one "meta <name>=<value>" line per metadata item.
#include <czmq.h>
#include <stdio.h>
#include <string.h>

static void print_cert(zcert_t *cert) {
    printf("public=%s\n", zcert_public_txt(cert));
    printf("secret=%s\n", zcert_secret_txt(cert));
    zlist_t *keys = zcert_meta_keys(cert);
    for (const char *key = zlist_first(keys); key; key = zlist_next(keys))
        printf("meta %s=%s\n", key, zcert_meta(cert, key));
    zlist_destroy(&keys);
}

int main(int argc, char **argv) {
    if (argc >= 4 && strcmp(argv[1], "write") == 0 && argc % 2 == 0) {
        zcert_t *cert = zcert_new();
        if (!cert) return 2;
        for (int i = 4; i + 1 < argc; i += 2)
            zcert_set_meta(cert, argv[i], "%s", argv[i + 1]);
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", argv[2], argv[3]);
        if (zcert_save(cert, path) != 0) return 3;
        print_cert(cert);
        zcert_destroy(&cert);
        return 0;
    }
    if (argc == 3 && strcmp(argv[1], "read") == 0) {
        zcert_t *cert = zcert_load(argv[2]);
        if (!cert) return 4;
        print_cert(cert);
        zcert_destroy(&cert);
        return 0;
    }
    fprintf(stderr, "usage: czmq-peer write DIR NAME [K V]... | czmq-peer read FILE\n");
    return 1;
}

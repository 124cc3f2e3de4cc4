/* hello [WORD]: prints "hello WORD" and exits 0. Built static (-static), dynamic, and with Go's
 * build-id note (-DGO_NOTE) by the coverage tests, as programs the shim cannot (fully) observe. */
#include <stdio.h>

#ifdef GO_NOTE
/* The note Go's linker writes in .note.go.buildid: name "Go", type 4 (ELF_NOTE_GOBUILDID_TAG). */
struct go_note {
    unsigned namesz, descsz, type;
    char name[4];
    char desc[8];
};
__attribute__((used, section(".note.go.buildid"), aligned(4))) static const struct go_note note = {
    4, 8, 4, "Go", "buildid"};
#endif

int main(int argc, char **argv)
{
    printf("hello %s\n", argc > 1 ? argv[1] : "world");
    return 0;
}

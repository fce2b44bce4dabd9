/*
 * page.c - the chat page of `nomoat serve` (page.html), embedded in the
 * binary so the server needs no files beside it.  The assembler includes the
 * HTML bytes as they are (.incbin, path relative to the project root where
 * make runs the compiler) and a NUL after them; the Makefile makes page.o
 * depend on page.html.
 */
#include "serve/internal.h"

__asm__(".section .rodata\n"
        ".global nm_serve_page\n"
        ".hidden nm_serve_page\n"
        ".type nm_serve_page, @object\n"
        ".balign 16\n"
        "nm_serve_page:\n"
        ".incbin \"src/serve/page.html\"\n"
        ".global nm_serve_page_end\n"
        ".hidden nm_serve_page_end\n"
        "nm_serve_page_end:\n"
        ".byte 0\n"
        ".previous\n");

extern const char nm_serve_page_end[] __attribute__((visibility("hidden")));

size_t nm_serve_page_len(void) { return (size_t)(nm_serve_page_end - nm_serve_page); }

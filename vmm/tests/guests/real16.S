# A real-mode guest loaded at 0x7c00 like a boot sector. Prints a line, then ends with
# the debug-exit port (ACTION=1, status byte 0x10) or an i8042 reset (ACTION=2).
.code16
.globl _start
_start:
    cli
    xor %ax, %ax
    mov %ax, %ds
    mov %ax, %ss
    mov $0x7c00, %sp
    mov $msg, %si
    mov $0x3f8, %dx
1:  lodsb
    test %al, %al
    jz 2f
    out %al, (%dx)
    jmp 1b
2:
.if ACTION == 1
    mov $0x501, %dx
    mov $0x10, %al
    out %al, (%dx)
.else
    mov $0xfe, %al
    out %al, $0x64
.endif
3:  jmp 3b
msg: .asciz "hull real-mode guest\n"

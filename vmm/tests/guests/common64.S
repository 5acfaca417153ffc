# Shared long-mode body of the 64-bit test guests. Entered with:
#   r12 = tag string, r15 = command line, r14/r13 = initrd address/size (0 if none),
#   r11 = number of memory map entries, a usable stack.
.code64
.text
.globl main64, puts, putc, newline
main64:
    mov %r12, %rsi
    call puts
    lea s_cmd(%rip), %rsi
    call puts
    mov %r15, %rsi
    call puts
    call newline
    lea s_mmap(%rip), %rsi
    call puts
    mov %r11d, %eax
    add $'0', %al
    call putc
    call newline
    test %r13, %r13
    jz 3f
    lea s_initrd(%rip), %rsi
    call puts
    mov %r14, %rsi
    mov %r13, %rcx
    cmp $16, %rcx
    jbe 2f
    mov $16, %rcx
2:  lodsb
    call putc
    dec %rcx
    jnz 2b
    call newline
3:  # find "act=" in the command line
    mov %r15, %rsi
4:  movzbl (%rsi), %eax
    test %eax, %eax
    jz act_default
    cmpl $0x3d746361, (%rsi)
    je 5f
    inc %rsi
    jmp 4b
5:  movzbl 4(%rsi), %eax
    cmp $'x', %al
    je act_exit
    cmp $'r', %al
    je act_reset
    cmp $'t', %al
    je act_triple
    cmp $'e', %al
    je act_echo
    cmp $'p', %al
    je act_spin
    cmp $'h', %al
    je act_halt
    cmp $'v', %al
    je act_vsock
    cmp $'a', %al
    je act_vsock_announce
    cmp $'c', %al
    je act_count
act_default:
act_reset:
    lea s_reset(%rip), %rsi
    call puts
    mov $0xfe, %al
    out %al, $0x64
6:  jmp 6b

act_exit:
    movzbl 5(%rsi), %ebx
    test %ebx, %ebx
    jnz 7f
    mov $0x2a, %ebx
7:  cmp $' ', %bl
    jne 8f
    mov $0x2a, %ebx
8:  lea s_exit(%rip), %rsi
    call puts
    mov %bl, %al
    mov $0x501, %dx
    out %al, (%dx)
9:  jmp 9b

act_triple:
    lea s_triple(%rip), %rsi
    call puts
    lidt idt_null(%rip)
    ud2
10: jmp 10b

act_echo:
    lea s_echo(%rip), %rsi
    call puts
11: mov $0x3fd, %dx
    inb (%dx), %al
    test $1, %al
    jz 11b
    mov $0x3f8, %dx
    inb (%dx), %al
    call putc
    cmp $'\n', %al
    jne 11b
    mov $0x501, %dx
    mov $0x45, %al
    out %al, (%dx)
12: jmp 12b

act_spin:
    lea s_spin(%rip), %rsi
    call puts
    xor %ecx, %ecx
13: inc %ecx
    test $0xfff, %ecx
    jnz 13b
    mov $'.', %al
    call putc
    jmp 13b

act_halt:
    lea s_halt(%rip), %rsi
    call puts
14: cli
    hlt
    jmp 14b

# Counts forever in rbx and in memory (`counter`), printing "c=<8 hex digits>" after
# each step; a register and memory that disagree end the VM (debug-exit 'M'). A VM
# restored from a snapshot must go on with the next number.
act_count:
    lea s_count(%rip), %rsi
    call puts
    xor %ebx, %ebx
    movq $0, counter(%rip)
17: xor %ecx, %ecx
18: inc %ecx
    test $0x3ff, %ecx
    jnz 18b
    inc %rbx
    incq counter(%rip)
    cmp counter(%rip), %rbx
    jne 21f
    mov $'c', %al
    call putc
    mov $'=', %al
    call putc
    mov %ebx, %edi
    mov $28, %ecx
19: mov %edi, %eax
    shr %cl, %eax
    and $0xf, %eax
    cmp $10, %al
    jb 20f
    add $('a' - 10 - '0'), %al
20: add $'0', %al
    call putc
    sub $4, %ecx
    jns 19b
    call newline
    jmp 17b
21: lea s_mismatch(%rip), %rsi
    call puts
    mov $0x501, %dx
    mov $'M', %al
    out %al, (%dx)
22: jmp 22b

puts:
    mov $0x3f8, %dx
15: lodsb
    test %al, %al
    jz 16f
    out %al, (%dx)
    jmp 15b
16: ret

putc:
    push %rdx
    mov $0x3f8, %dx
    out %al, (%dx)
    pop %rdx
    ret

newline:
    mov $'\n', %al
    jmp putc

idt_null:
    .word 0
    .quad 0
s_cmd:    .asciz "cmdline="
s_mmap:   .asciz "memmap="
s_initrd: .asciz "initrd="
s_reset:  .asciz "action: i8042 reset\n"
s_exit:   .asciz "action: debug exit\n"
s_triple: .asciz "action: triple fault\n"
s_echo:   .asciz "action: echo\n"
s_spin:   .asciz "action: spin\n"
s_halt:   .asciz "action: halt\n"
s_count:  .asciz "action: count\n"
s_mismatch: .asciz "count: register and memory disagree\n"
    .balign 8
counter:  .quad 0

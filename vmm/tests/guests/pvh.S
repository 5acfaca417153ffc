# PVH guest: an ELF whose XEN_ELFNOTE_PHYS32_ENTRY note points at pvh_start. Entered in
# 32-bit protected mode with paging off and ebx = hvm_start_info; checks the magic, then
# switches to long mode itself (its own GDT and 1 GiB identity map) like Linux does.
.section .note.Xen, "a"
    .align 4
    .long 4                     # namesz
    .long 4                     # descsz
    .long 18                    # XEN_ELFNOTE_PHYS32_ENTRY
    .asciz "Xen"
    .long pvh_start

.text
.code32
.globl pvh_start
pvh_start:
    cld
    mov $0x3f8, %dx
    cmpl $0x336ec578, (%ebx)
    jne bad_magic
    mov $'P', %al
    out %al, (%dx)
    mov %ebx, %esi
    lgdt gdt_desc
    ljmp $0x08, $1f
1:  mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov $stack_top, %esp
    mov %cr4, %eax
    or $0x20, %eax              # PAE
    mov %eax, %cr4
    mov $pml4, %eax
    mov %eax, %cr3
    mov $0xc0000080, %ecx       # EFER.LME
    rdmsr
    bts $8, %eax
    wrmsr
    mov %cr0, %eax
    or $0x80000001, %eax        # PG | PE
    mov %eax, %cr0
    ljmp $0x18, $long_entry

bad_magic:
    mov $'!', %al
    out %al, (%dx)
    mov $0x501, %dx
    mov $0x7f, %al
    out %al, (%dx)
2:  jmp 2b

.code64
long_entry:
    mov $0x10, %eax
    mov %eax, %ds
    mov %eax, %es
    mov %eax, %ss
    mov %esi, %esi              # start_info, zero-extended
    mov 24(%rsi), %r15          # cmdline_paddr
    xor %r14, %r14
    xor %r13, %r13
    cmpl $0, 12(%rsi)           # nr_modules
    je 3f
    mov 16(%rsi), %rax          # modlist_paddr
    mov (%rax), %r14            # modules[0].paddr
    mov 8(%rax), %r13           # modules[0].size
3:  mov 48(%rsi), %r11d         # memmap_entries
    lea tag(%rip), %r12
    jmp main64

tag: .asciz "\nhull PVH guest in long mode\n"

    .align 16
gdt:
    .quad 0
    .quad 0x00cf9b000000ffff    # 0x08 code32
    .quad 0x00cf93000000ffff    # 0x10 data
    .quad 0x00af9b000000ffff    # 0x18 code64
gdt_end:
gdt_desc:
    .word gdt_end - gdt - 1
    .long gdt

.data
    .align 4096
pml4:
    .quad pdpt + 3
    .fill 511, 8, 0
pdpt:
    .quad pd + 3
    .fill 511, 8, 0
pd:
    .set i, 0
    .rept 512
    .quad (i << 21) | 0x83
    .set i, i + 1
    .endr
    .fill 1024, 4, 0
stack_top:

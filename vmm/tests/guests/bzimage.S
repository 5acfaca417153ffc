# A bzImage-style guest: a setup header (boot protocol 2.15, one setup sector) and a
# protected-mode payload loaded at code32_start = 0x100000 whose 64-bit entry sits at
# +0x200, entered with rsi = zero page and the VMM's identity-mapped page tables.
.section .setup, "a"
.code16
    .org 0x1f1
    .byte 1                     # setup_sects
    .word 0                     # root_flags
    .long 0                     # syssize
    .word 0                     # ram_size
    .word 0                     # vid_mode
    .word 0                     # root_dev
    .word 0xaa55                # boot_flag
    .byte 0xeb, 0x00            # jump
    .ascii "HdrS"               # header
    .word 0x020f                # version 2.15
    .long 0                     # realmode_swtch
    .word 0                     # start_sys_seg
    .word 0                     # kernel_version
    .byte 0                     # type_of_loader
    .byte 0x01                  # loadflags: LOADED_HIGH
    .word 0                     # setup_move_size
    .long 0x100000              # code32_start
    .long 0                     # ramdisk_image
    .long 0                     # ramdisk_size
    .long 0                     # bootsect_kludge
    .word 0                     # heap_end_ptr
    .byte 0                     # ext_loader_ver
    .byte 0                     # ext_loader_type
    .long 0                     # cmd_line_ptr
    .long 0x37ffffff            # initrd_addr_max
    .long 0x200000              # kernel_alignment
    .byte 0                     # relocatable_kernel
    .byte 0                     # min_alignment
    .word 0x1                   # xloadflags: XLF_KERNEL_64
    .long 255                   # cmdline_size
    .org 1024

.text
.code32
startup_32:                     # the 32-bit entry is not used by hull-vmm
    ud2
    .org 0x200
.code64
.globl startup_64
startup_64:
    mov $0x3f8, %dx
    cmpl $0x53726448, 0x202(%rsi)   # zero page hdr.header
    jne 1f
    mov $'B', %al
    out %al, (%dx)
    mov 0x228(%rsi), %r15d      # hdr.cmd_line_ptr
    mov 0x218(%rsi), %r14d      # hdr.ramdisk_image
    mov 0x21c(%rsi), %r13d      # hdr.ramdisk_size
    movzbl 0x1e8(%rsi), %r11d   # e820_entries
    lea tag(%rip), %r12
    jmp main64
1:  mov $'!', %al
    out %al, (%dx)
    mov $0x501, %dx
    mov $0x7e, %al
    out %al, (%dx)
2:  jmp 2b

tag: .asciz "\nhull 64-bit boot protocol guest\n"

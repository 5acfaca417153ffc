# A tiny virtio driver for the 64-bit test guests (act=v): brings up the virtio-vsock
# device in virtio-mmio slot 0 (0xd0000000) through its registers, sets up its three
# split virtqueues (8 entries each), accepts one host-initiated connection on vsock port
# 1024, echoes the first data packet back, then writes 'V' to the debug-exit port.
# act=a first announces itself the way hull-agent does: it connects to host port 1025
# (hybrid vsock: `<uds>_1025` on the host), waits for the RESPONSE and sends
# "HULL-AGENT-READY 1\n"; then it goes on as act=v.
# Any check that fails prints "vsock: FAIL <n>" and debug-exits with 'F'.
# Needs hull's identity map of 0..4 GiB (the 64-bit boot protocol guests), interrupts
# off (it polls the used rings). Ring-0 code is emulated on PVM: keep it small.
.code64
.text
.equ MMIO, 0xd0000000
.equ QB, 0x400000          # queue q: descriptors QB+q*0x1000, avail +0x400, used +0x800
.equ RXB, 0x410000         # 8 RX buffers 0x200 apart, one descriptor each (header + data)
.equ TXH, 0x420000         # TX header
.equ TXD, 0x420100         # TX payload
.equ PORT, 1024
.equ ANNOUNCE_PORT, 1025

.globl act_vsock_announce
act_vsock_announce:
    movb $1, v_announce(%rip)
.globl act_vsock
act_vsock:
    cli
    lea s_v_start(%rip), %rsi
    call puts
    mov $MMIO, %ebx
    mov $QB, %ebp
    xor %r14d, %r14d              # guest bytes consumed (fwd_cnt)
    mov $'1', %r15b
    cmpl $0x74726976, 0x00(%rbx)  # MagicValue
    jne v_fail
    cmpl $2, 0x04(%rbx)           # Version
    jne v_fail
    cmpl $19, 0x08(%rbx)          # DeviceID: vsock
    jne v_fail
    lea s_v_ids(%rip), %rsi
    call puts
    mov $'2', %r15b
    movl $0, 0x70(%rbx)           # reset
    movl $1, 0x70(%rbx)           # ACKNOWLEDGE
    movl $3, 0x70(%rbx)           # DRIVER
    movl $1, 0x24(%rbx)           # DriverFeaturesSel 1
    movl $1, 0x20(%rbx)           # VIRTIO_F_VERSION_1 (bit 32)
    movl $0, 0x24(%rbx)
    movl $0, 0x20(%rbx)
    movl $0xb, 0x70(%rbx)         # FEATURES_OK
    testl $8, 0x70(%rbx)
    jz v_fail
    xor %ecx, %ecx
1:  movl %ecx, 0x30(%rbx)         # QueueSel
    movl $8, 0x38(%rbx)           # QueueNum
    mov %ecx, %eax
    shl $12, %eax
    add %ebp, %eax
    movl %eax, 0x80(%rbx)         # QueueDesc
    movl $0, 0x84(%rbx)
    add $0x400, %eax
    movl %eax, 0x90(%rbx)         # QueueDriver (avail)
    movl $0, 0x94(%rbx)
    add $0x400, %eax
    movl %eax, 0xa0(%rbx)         # QueueDevice (used)
    movl $0, 0xa4(%rbx)
    movl $1, 0x44(%rbx)           # QueueReady
    inc %ecx
    cmp $3, %ecx
    jne 1b
    mov $'3', %r15b
    movl $0xf, 0x70(%rbx)         # DRIVER_OK
    testl $0x40, 0x70(%rbx)       # DEVICE_NEEDS_RESET?
    jnz v_fail
    xor %ecx, %ecx
2:  mov %ecx, %eax                # RX descriptor ecx -> buffer ecx
    shl $9, %eax
    add $RXB, %eax
    mov %ecx, %edx
    shl $4, %edx
    mov %rax, (%rbp,%rdx)
    movl $300, 8(%rbp,%rdx)
    movw $2, 12(%rbp,%rdx)        # VRING_DESC_F_WRITE
    movw %cx, 0x404(%rbp,%rcx,2)
    inc %ecx
    cmp $8, %ecx
    jne 2b
    movw $8, 0x402(%rbp)
    mov $8, %r12d                 # RX avail idx
    xor %r8d, %r8d                # RX used entries seen
    xor %r10d, %r10d              # TX avail idx
    movl $0, 0x50(%rbx)           # QueueNotify RX
    lea s_v_ready(%rip), %rsi
    call puts
    cmpb $0, v_announce(%rip)
    je 7f
    mov $'A', %r15b               # guest-initiated connection to host port 1025
    mov $ANNOUNCE_PORT, %r9d
    xor %ecx, %ecx
    mov $1, %eax                  # REQUEST
    call tx_send
8:  call rx_next                  # RESPONSE (skip credit updates)
    cmpw $3, 30(%rdi)             # RST: nothing listens on the host
    je v_fail
    cmpw $2, 30(%rdi)
    je 9f
    call rx_recycle
    jmp 8b
9:  cmpl $ANNOUNCE_PORT, 16(%rdi)
    jne v_fail
    call rx_recycle
    lea s_v_ann(%rip), %rsi
    mov $TXD, %edi
    mov $(s_v_ann_end - s_v_ann), %ecx
    rep movsb
    mov $(s_v_ann_end - s_v_ann), %ecx
    mov $5, %eax                  # RW
    call tx_send
    lea s_v_announced(%rip), %rsi
    call puts
7:  mov $'4', %r15b
10: call rx_next                  # the host's REQUEST (skip what the announce
    cmpw $1, 30(%rdi)             # connection may still send: credit, shutdown)
    je 11f
    call rx_recycle
    jmp 10b
11: cmpl $PORT, 20(%rdi)
    jne v_fail
    mov 16(%rdi), %r9d            # host port
    call rx_recycle
    xor %ecx, %ecx
    mov $2, %eax                  # RESPONSE
    call tx_send
    lea s_v_conn(%rip), %rsi
    call puts
3:  call rx_next                  # data (skip credit updates)
    cmpw $5, 30(%rdi)
    je 4f
    call rx_recycle
    jmp 3b
4:  mov $'5', %r15b
    mov 24(%rdi), %ecx
    cmp $256, %ecx
    ja v_fail
    add %ecx, %r14d
    mov %ecx, %r13d
    lea 44(%rdi), %rsi
    mov $TXD, %edi
    rep movsb
    call rx_recycle
    mov %r13d, %ecx
    mov $5, %eax                  # RW
    call tx_send
    lea s_v_echo(%rip), %rsi
    call puts
    mov $0x501, %dx
    mov $'V', %al
    out %al, (%dx)
5:  jmp 5b

v_fail:
    lea s_v_fail(%rip), %rsi
    call puts
    mov %r15b, %al
    call putc
    call newline
    mov $0x501, %dx
    mov $'F', %al
    out %al, (%dx)
6:  jmp 6b

# Waits for the next used RX buffer: rdi = its address, r11 = its descriptor.
rx_next:
    movzwl 0x802(%rbp), %eax
    cmp %r8w, %ax
    je rx_next
    mov %r8d, %eax
    and $7, %eax
    mov 0x804(%rbp,%rax,8), %r11d
    and $7, %r11d
    inc %r8d
    mov %r11d, %edi
    shl $9, %edi
    add $RXB, %edi
    ret

# Gives RX descriptor r11 back to the device.
rx_recycle:
    mov %r12d, %eax
    and $7, %eax
    movw %r11w, 0x404(%rbp,%rax,2)
    inc %r12d
    movw %r12w, 0x402(%rbp)
    movl $0, 0x50(%rbx)
    ret

# Sends op eax with ecx payload bytes (at TXD) to the host port r9d; waits until used.
tx_send:
    mov $TXH, %edi
    movq $3, 0(%rdi)              # src_cid
    movq $2, 8(%rdi)              # dst_cid (host)
    movl $PORT, 16(%rdi)
    movl %r9d, 20(%rdi)
    movl %ecx, 24(%rdi)
    movw $1, 28(%rdi)             # TYPE_STREAM
    movw %ax, 30(%rdi)
    movl $0, 32(%rdi)
    movl $4096, 36(%rdi)          # buf_alloc
    movl %r14d, 40(%rdi)          # fwd_cnt
    lea 0x1000(%rbp), %rdx        # TX descriptor table
    movq $TXH, (%rdx)
    movl $44, 8(%rdx)
    movw $0, 12(%rdx)
    test %ecx, %ecx
    jz 1f
    movw $1, 12(%rdx)             # VRING_DESC_F_NEXT
    movw $1, 14(%rdx)
    movq $TXD, 16(%rdx)
    movl %ecx, 24(%rdx)
    movw $0, 28(%rdx)
1:  mov %r10d, %eax
    and $7, %eax
    movw $0, 0x1404(%rbp,%rax,2)
    inc %r10d
    movw %r10w, 0x1402(%rbp)
    movl $1, 0x50(%rbx)           # QueueNotify TX
2:  movzwl 0x1802(%rbp), %eax
    cmp %r10w, %ax
    jne 2b
    ret

s_v_start: .asciz "action: vsock\n"
s_v_ids:   .asciz "vsock: virtio-mmio v2, device 19\n"
s_v_ready: .asciz "vsock: queues ready\n"
s_v_conn:  .asciz "vsock: connected\n"
s_v_echo:  .asciz "vsock: echoed\n"
s_v_fail:  .asciz "vsock: FAIL "
s_v_announced: .asciz "vsock: announced\n"
s_v_ann:   .ascii "HULL-AGENT-READY 1\n"
s_v_ann_end:
v_announce: .byte 0

//! Building a VM, as a script: check the description, open its files, create KVM state
//! and memory, load the kernel and its boot data, attach devices, configure vCPUs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::boot;
use crate::arch::x86_64::layout::VIRTIO_MMIO_BASE;
use crate::bus::Bus;
use crate::config::VmConfig;
use crate::control::Control;
use crate::devices::legacy::{ConsoleBuffer, LimitedWriter, SerialSnapshot};
use crate::devices::legacy::{
    DebugExit, SerialDevice, COM1_IRQ, COM1_PORT_BASE, COM1_PORT_LEN, DEBUG_EXIT_PORT, I8042,
    I8042_PORT_BASE, I8042_PORT_LEN,
};
use crate::devices::virtio::block::{Block, BlockOptions};
use crate::devices::virtio::event_handler::VirtioEvents;
use crate::devices::virtio::fs::Fs;
use crate::devices::virtio::mmio::{MmioTransport, TransportState};
use crate::devices::virtio::net::{Net, Tap};
use crate::devices::virtio::vsock::Vsock;
use crate::devices::virtio::{IrqTrigger, VirtioDevice, MMIO_WINDOW};
use crate::error::{Error, Result};
use crate::event_loop::{ConsoleInputSource, ConsoleOutputSource, EventLoop};
use crate::snapshot::LoadedSnapshot;
use crate::vmm::{SnapshotDevices, Vmm};
use crate::vstate::kvm::KvmContext;
use crate::vstate::memory::{create_guest_memory, restore_guest_memory, MemoryBacking};
use crate::vstate::vcpu::Vcpu;
use crate::vstate::vm::Vm;

/// The console's files, opened before any KVM work so that a bad path is a
/// configuration error.
struct Console {
    output: Box<dyn Write + Send>,
    input: Option<File>,
}

/// The parts of a built VM that are not yet a [`Vmm`].
struct Parts {
    config: VmConfig,
    kvm: KvmContext,
    memory: GuestMemoryMmap,
    vm: Vm,
    control: Arc<Control>,
}

impl Parts {
    fn new(config: VmConfig, kvm: KvmContext, memory: GuestMemoryMmap, vm: Vm) -> Result<Parts> {
        Ok(Parts {
            config,
            kvm,
            memory,
            vm,
            control: Arc::new(Control::new()?),
        })
    }
}

pub fn build(config: VmConfig) -> Result<Vmm> {
    config.validate()?;
    let (mut kernel_file, mut initrd_file) = open_boot_files(&config)?;
    let console = open_console(&config)?;
    let mem_size = config.mem_bytes();

    let kvm = KvmContext::new()?;
    let backing = MemoryBacking {
        shared: config.shared_memory,
        hugepages: config.hugepages,
    };
    let memory = create_guest_memory(mem_size, backing)?;
    let vm = Vm::new(&kvm, &memory)?;

    let virtio = open_virtio_devices(&config)?;
    let cmdline = announce_virtio(&config.cmdline, virtio.len());
    let (kernel, _initrd) = boot::prepare(
        &memory,
        &mut kernel_file,
        config.kernel_format,
        initrd_file.as_mut(),
        &cmdline,
        mem_size,
        config.vcpus,
    )?;

    let parts = Parts::new(config, kvm, memory, vm)?;
    let (pio, serial) = attach_legacy(&parts, console.output, None)?;
    let (mmio, transports, events) = attach_virtio_devices(&parts, virtio, None)?;
    let mut vcpus = Vec::with_capacity(usize::from(parts.config.vcpus));
    for index in 0..parts.config.vcpus {
        let vcpu = Vcpu::new(&parts.vm, &parts.kvm, index, pio.clone(), mmio.clone())?;
        vcpu.configure(&parts.kvm, parts.config.vcpus, &kernel.entry)?;
        vcpus.push(vcpu);
    }
    tracing::debug!(entry = kernel.entry.addr.0, protocol = ?kernel.entry.protocol, "VM built");
    assemble(parts, vcpus, console.input, serial, transports, events)
}

/// A VM from a loaded snapshot, as a script: check the snapshot against `config`, map
/// its memory, set the VM's and each vCPU's state, and attach the devices in their
/// saved states to this VM's own host side (console, sockets, disks, taps).
pub fn restore(snapshot: LoadedSnapshot, config: VmConfig) -> Result<Vmm> {
    config.validate()?;
    snapshot.check_matches(&config)?;
    let console = open_console(&config)?;

    let kvm = KvmContext::new()?;
    let backing = MemoryBacking {
        shared: config.shared_memory,
        hugepages: config.hugepages,
    };
    let started = std::time::Instant::now();
    let memory = restore_guest_memory(config.mem_bytes(), backing, &snapshot.memory)?;
    tracing::debug!(
        shared = backing.shared,
        ms = started.elapsed().as_millis() as u64,
        "guest memory restored"
    );
    let vm = Vm::new(&kvm, &memory)?;
    vm.restore_state(&snapshot.state.vm)?;

    let virtio = open_virtio_devices(&config)?;
    let parts = Parts::new(config, kvm, memory, vm)?;
    let (pio, serial) = attach_legacy(&parts, console.output, snapshot.state.serial.as_ref())?;
    let saved = Some(snapshot.state.virtio.as_slice());
    let (mmio, transports, events) = attach_virtio_devices(&parts, virtio, saved)?;
    let mut vcpus = Vec::with_capacity(usize::from(parts.config.vcpus));
    for (index, state) in (0..parts.config.vcpus).zip(&snapshot.state.vcpus) {
        let vcpu = Vcpu::new(&parts.vm, &parts.kvm, index, pio.clone(), mmio.clone())?;
        vcpu.restore_state(state)?;
        vcpus.push(vcpu);
    }
    tracing::debug!(snapshot = %snapshot.dir.display(), "VM restored");
    assemble(parts, vcpus, console.input, serial, transports, events)
}

/// The legacy devices on the port bus: COM1 (new, or in a snapshot's state), the
/// i8042 and the debug-exit port, as the configuration asks.
fn attach_legacy(
    parts: &Parts,
    console_output: Box<dyn Write + Send>,
    saved_serial: Option<&SerialSnapshot>,
) -> Result<(Arc<Bus>, Option<SerialParts>)> {
    let devices = &parts.config.devices;
    let mut pio = Bus::new();
    let serial = if devices.serial {
        Some(attach_serial(
            &parts.vm,
            &mut pio,
            console_output,
            saved_serial,
        )?)
    } else {
        None
    };
    if devices.i8042 {
        let i8042 = Arc::new(Mutex::new(I8042::new(parts.control.clone())));
        pio.insert(I8042_PORT_BASE.into(), I8042_PORT_LEN.into(), i8042)?;
    }
    if devices.debug_exit {
        let dev = Arc::new(Mutex::new(DebugExit::new(parts.control.clone())));
        pio.insert(DEBUG_EXIT_PORT.into(), 1, dev)?;
    }
    Ok((Arc::new(pio), serial))
}

type Transports = Vec<Arc<Mutex<MmioTransport>>>;

/// Every virtio device on the MMIO bus, each in its slot, fresh or (with `saved`, one
/// state per slot) as the snapshot left it.
fn attach_virtio_devices(
    parts: &Parts,
    devices: Vec<SharedVirtio>,
    saved: Option<&[TransportState]>,
) -> Result<(Arc<Bus>, Transports, Vec<VirtioEvents>)> {
    let mut mmio = Bus::new();
    let mut transports = Vec::with_capacity(devices.len());
    let mut events = Vec::with_capacity(devices.len());
    for (slot, device) in devices.into_iter().enumerate() {
        let state =
            match saved {
                Some(states) => Some(states.get(slot).ok_or_else(|| {
                    Error::Config(format!("no saved state for virtio slot {slot}"))
                })?),
                None => None,
            };
        let (transport, evts) = attach_virtio(parts, &mut mmio, slot, device, state)?;
        transports.push(transport);
        events.push(evts);
    }
    Ok((Arc::new(mmio), transports, events))
}

/// The [`Vmm`]: the event loop over the console and the devices' host sides.
fn assemble(
    parts: Parts,
    vcpus: Vec<Vcpu>,
    console_input: Option<File>,
    serial: Option<SerialParts>,
    transports: Transports,
    virtio_events: Vec<VirtioEvents>,
) -> Result<Vmm> {
    let snapshot_serial = serial.as_ref().map(|p| p.serial.clone());
    let (console_output, serial) = match serial {
        Some(p) => (
            Some(ConsoleOutputSource {
                waker: p.waker,
                serial: p.serial.clone(),
            }),
            Some((p.serial, p.drained)),
        ),
        None => (None, None),
    };
    let console = match (console_input, serial) {
        (Some(input), Some((serial, drained))) => Some(ConsoleInputSource {
            input,
            drained,
            serial,
        }),
        (Some(_), None) => {
            return Err(Error::Config(
                "console_input needs the serial device".into(),
            ))
        }
        (None, _) => None,
    };
    let event_loop = EventLoop::new(
        parts.control.clone(),
        console,
        console_output,
        virtio_events,
    )?;
    Ok(Vmm {
        control: parts.control,
        vcpus,
        event_loop,
        seccomp: parts.config.seccomp,
        devices: SnapshotDevices {
            serial: snapshot_serial,
            transports,
        },
        config: parts.config,
        vm: parts.vm,
        memory: parts.memory,
        _kvm: parts.kvm,
    })
}

fn open_boot_files(config: &VmConfig) -> Result<(File, Option<File>)> {
    let open = |p: &Path| File::open(p).map_err(Error::file(p));
    let kernel = open(&config.kernel)?;
    let initrd = config.initrd.as_deref().map(open).transpose()?;
    Ok((kernel, initrd))
}

fn open_console(config: &VmConfig) -> Result<Console> {
    let output: Box<dyn Write + Send> = match &config.console {
        Some(path) => Box::new(LimitedWriter::new(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(path)
                .map_err(Error::file(path))?,
            config.console_limit_bytes,
        )),
        None => Box::new(std::io::sink()),
    };
    let input = match &config.console_input {
        Some(path) => Some(open_console_input(path)?),
        None => None,
    };
    Ok(Console { output, input })
}

/// Console input must be pollable (FIFO, terminal, socket): epoll refuses regular files.
fn open_console_input(path: &Path) -> Result<File> {
    let file = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(path)
        .map_err(Error::file(path))?;
    let kind = file.metadata().map_err(Error::file(path))?.file_type();
    if !(kind.is_fifo() || kind.is_char_device() || kind.is_socket()) {
        return Err(Error::Config(format!(
            "console_input {} must be a FIFO, terminal or socket",
            path.display()
        )));
    }
    Ok(file)
}

/// The serial device and the eventfds the event loop watches: `drained` (the guest
/// emptied the input FIFO), `waker` (an unfinished console line waits).
struct SerialParts {
    serial: Arc<Mutex<SerialDevice>>,
    drained: EventFd,
    waker: EventFd,
}

fn attach_serial(
    vm: &Vm,
    pio: &mut Bus,
    out: Box<dyn Write + Send>,
    saved: Option<&SerialSnapshot>,
) -> Result<SerialParts> {
    let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(Error::host("eventfd"));
    let clone = |e: &EventFd| e.try_clone().map_err(Error::host("eventfd"));
    let irq = evt()?;
    vm.register_irqfd(&irq, COM1_IRQ)?;
    let drained = evt()?;
    let waker = evt()?;
    let out = ConsoleBuffer::new(out, Some(clone(&waker)?));
    let device = match saved {
        Some(state) => SerialDevice::restore(irq, clone(&drained)?, out, state)
            .map_err(|reason| Error::Config(format!("snapshot: {reason}")))?,
        None => SerialDevice::new(irq, clone(&drained)?, out),
    };
    let serial = Arc::new(Mutex::new(device));
    pio.insert(COM1_PORT_BASE.into(), COM1_PORT_LEN.into(), serial.clone())?;
    Ok(SerialParts {
        serial,
        drained,
        waker,
    })
}

/// ISA IRQs given to virtio-mmio devices, in slot order (each device needs its own:
/// irqfd interrupts are edge-triggered). 4 is COM1, 8 the RTC, 12 the PS/2 mouse.
pub const VIRTIO_IRQS: [u32; crate::config::MAX_VIRTIO_DEVICES] = [5, 6, 7, 9, 10, 11, 14, 15];

type SharedVirtio = Arc<Mutex<dyn VirtioDevice>>;

/// The virtio devices of `config`, in slot order: disks, network interfaces, fs, vsock.
fn open_virtio_devices(config: &VmConfig) -> Result<Vec<SharedVirtio>> {
    let mut devices: Vec<SharedVirtio> = Vec::new();
    for b in &config.block {
        let options = BlockOptions {
            read_only: b.read_only,
            volatile: b.volatile,
            id: b.id.clone(),
        };
        let block = match b.fd {
            Some(fd) => Block::from_inherited_fd(fd, options)?,
            None => Block::open(&b.path, options)?,
        };
        devices.push(Arc::new(Mutex::new(block)));
    }
    for (i, n) in config.net.iter().enumerate() {
        let slot = config.block.len() + i;
        let mac = match &n.mac {
            Some(text) => crate::config::parse_mac(text)
                .ok_or_else(|| Error::Config(format!("bad mac {text:?}")))?,
            None => [0x02, 0x68, 0x75, 0x6c, slot as u8, 0],
        };
        let tap = Tap::from_fd(n.tap_fd)
            .map_err(|e| Error::Config(format!("tap_fd {}: {e}", n.tap_fd)))?;
        let net = Net::new(tap, mac).map_err(Error::host("virtio-net epoll"))?;
        devices.push(Arc::new(Mutex::new(net)));
    }
    if let Some(f) = &config.fs {
        devices.push(Arc::new(Mutex::new(Fs::connect(&f.socket, &f.tag)?)));
    }
    if let Some(v) = &config.vsock {
        devices.push(Arc::new(Mutex::new(Vsock::new(v.guest_cid, &v.uds_path)?)));
    }
    Ok(devices)
}

/// Guest address and IRQ of virtio slot `slot`.
pub fn virtio_slot(slot: usize) -> Option<(u64, u32)> {
    let irq = *VIRTIO_IRQS.get(slot)?;
    Some((VIRTIO_MMIO_BASE + slot as u64 * MMIO_WINDOW, irq))
}

/// Appends `virtio_mmio.device=4K@<addr>:<irq>` for each device (Linux needs
/// `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`).
fn announce_virtio(cmdline: &str, count: usize) -> String {
    let mut line = cmdline.to_string();
    for (addr, irq) in (0..count).filter_map(virtio_slot) {
        if !line.is_empty() {
            line.push(' ');
        }
        line.push_str(&format!("virtio_mmio.device=4K@{addr:#x}:{irq}"));
    }
    line
}

/// Puts `device` on the MMIO bus in `slot`: irqfd for its interrupt, ioeventfds for its
/// queue notifications, and an event-loop subscriber that serves them. With `saved`,
/// the transport (and an active device) starts in that state.
fn attach_virtio(
    parts: &Parts,
    mmio: &mut Bus,
    slot: usize,
    device: SharedVirtio,
    saved: Option<&TransportState>,
) -> Result<(Arc<Mutex<MmioTransport>>, VirtioEvents)> {
    let vm = &parts.vm;
    let (addr, irq) =
        virtio_slot(slot).ok_or_else(|| Error::Config("too many virtio devices".into()))?;
    let irq_evt = EventFd::new(libc::EFD_NONBLOCK).map_err(Error::host("eventfd"))?;
    vm.register_irqfd(&irq_evt, irq)?;
    let trigger = Arc::new(IrqTrigger::new(irq_evt));
    let memory = parts.memory.clone();
    let transport = match saved {
        Some(state) => MmioTransport::restore(device.clone(), memory, trigger, state)
            .map_err(|e| Error::Config(format!("snapshot: virtio slot {slot}: {e}")))?,
        None => MmioTransport::new(device.clone(), memory, trigger)
            .map_err(Error::host("virtio queue eventfds"))?,
    };
    let notify = addr + u64::from(virtio_bindings::virtio_mmio::VIRTIO_MMIO_QUEUE_NOTIFY);
    let mut evts = Vec::new();
    for (index, evt) in transport.queue_evts().iter().enumerate() {
        vm.register_ioevent(evt, notify, index as u32)?;
        evts.push(evt.try_clone().map_err(Error::host("eventfd"))?);
    }
    let transport = Arc::new(Mutex::new(transport));
    mmio.insert(addr, MMIO_WINDOW, transport.clone())?;
    Ok((transport, VirtioEvents::new(device, evts)))
}

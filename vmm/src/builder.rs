//! Building a VM, as a script: check the description, open its files, create KVM state
//! and memory, load the kernel and its boot data, attach devices, configure vCPUs.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::arch::x86_64::boot;
use crate::bus::Bus;
use crate::config::VmConfig;
use crate::control::Control;
use crate::devices::legacy::LimitedWriter;
use crate::devices::legacy::{
    DebugExit, SerialDevice, COM1_IRQ, COM1_PORT_BASE, COM1_PORT_LEN, DEBUG_EXIT_PORT, I8042,
    I8042_PORT_BASE, I8042_PORT_LEN,
};
use crate::error::{Error, Result};
use crate::event_loop::{ConsoleInputSource, EventLoop};
use crate::vmm::Vmm;
use crate::vstate::kvm::KvmContext;
use crate::vstate::memory::{create_guest_memory, MemoryBacking};
use crate::vstate::vcpu::Vcpu;
use crate::vstate::vm::Vm;

/// Files named by the configuration, opened before any KVM work so that a bad path is
/// a configuration error.
struct Files {
    kernel: File,
    initrd: Option<File>,
    console_out: Box<dyn Write + Send>,
    console_in: Option<File>,
}

pub fn build(config: VmConfig) -> Result<Vmm> {
    config.validate()?;
    let mut files = open_files(&config)?;
    let mem_size = config.mem_bytes();

    let kvm = KvmContext::new()?;
    let backing = MemoryBacking {
        shared: config.shared_memory,
        hugepages: config.hugepages,
    };
    let memory = create_guest_memory(mem_size, backing)?;
    let vm = Vm::new(&kvm, &memory)?;

    let (kernel, _initrd) = boot::prepare(
        &memory,
        &mut files.kernel,
        config.kernel_format,
        files.initrd.as_mut(),
        &config.cmdline,
        mem_size,
        config.vcpus,
    )?;

    let control = Arc::new(Control::new()?);
    let mut pio = Bus::new();
    let serial = if config.devices.serial {
        Some(attach_serial(&vm, &mut pio, files.console_out)?)
    } else {
        None
    };
    if config.devices.i8042 {
        let i8042 = Arc::new(Mutex::new(I8042::new(control.clone())));
        pio.insert(I8042_PORT_BASE.into(), I8042_PORT_LEN.into(), i8042)?;
    }
    if config.devices.debug_exit {
        let dev = Arc::new(Mutex::new(DebugExit::new(control.clone())));
        pio.insert(DEBUG_EXIT_PORT.into(), 1, dev)?;
    }
    let pio = Arc::new(pio);
    let mmio = Arc::new(Bus::new());

    let mut vcpus = Vec::with_capacity(usize::from(config.vcpus));
    for index in 0..config.vcpus {
        let vcpu = Vcpu::new(&vm, index, pio.clone(), mmio.clone())?;
        vcpu.configure(&kvm, config.vcpus, &kernel.entry)?;
        vcpus.push(vcpu);
    }

    let console = match (files.console_in, serial) {
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
    let event_loop = EventLoop::new(control.clone(), console)?;
    tracing::debug!(entry = kernel.entry.addr.0, protocol = ?kernel.entry.protocol, "VM built");
    Ok(Vmm {
        control,
        vcpus,
        event_loop,
        _vm: vm,
        _memory: memory,
        _kvm: kvm,
    })
}

fn open_files(config: &VmConfig) -> Result<Files> {
    let open = |p: &Path| File::open(p).map_err(Error::file(p));
    let kernel = open(&config.kernel)?;
    let initrd = config.initrd.as_deref().map(open).transpose()?;
    let console_out: Box<dyn Write + Send> = match &config.console {
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
    let console_in = match &config.console_input {
        Some(path) => Some(open_console_input(path)?),
        None => None,
    };
    Ok(Files {
        kernel,
        initrd,
        console_out,
        console_in,
    })
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

type SerialParts = (Arc<Mutex<SerialDevice>>, EventFd);

fn attach_serial(vm: &Vm, pio: &mut Bus, out: Box<dyn Write + Send>) -> Result<SerialParts> {
    let evt = || EventFd::new(libc::EFD_NONBLOCK).map_err(Error::host("eventfd"));
    let irq = evt()?;
    vm.register_irqfd(&irq, COM1_IRQ)?;
    let drained = evt()?;
    let drained_for_device = drained.try_clone().map_err(Error::host("eventfd"))?;
    let serial = Arc::new(Mutex::new(SerialDevice::new(irq, drained_for_device, out)));
    pio.insert(COM1_PORT_BASE.into(), COM1_PORT_LEN.into(), serial.clone())?;
    Ok((serial, drained))
}

//! Device-model tests: a test driver builds virtqueues in in-process guest memory the
//! way a guest driver does and talks to devices only through the virtio-mmio registers;
//! hostile inputs must end in a device error or a dropped request, never a panic, hang
//! or out-of-bounds access.

mod block;
mod driver;
mod fs;
mod mmio;
mod net;
mod vsock;

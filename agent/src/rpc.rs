//! The ttrpc handlers: one thin method per RPC of `hull_proto::AgentService`.
//!
//! Every handler does the same four things, in this order: open a span named after the
//! RPC, (policy check: next issue), call `service::<area>::do_xxx(req)`, map the error to
//! a ttrpc status ([`to_status`]). Logic lives in `service/`, never here.
//!
//! RPCs not implemented yet answer `UNIMPLEMENTED` with the RPC's name (the generated
//! trait's defaults would answer `NOT_FOUND`, which reads like "no such service").

use std::future::Future;
use std::sync::Arc;

use async_trait::async_trait;
use hull_proto::*;
use tracing::{debug, info_span, warn, Instrument};
use ttrpc::r#async::TtrpcContext;
use ttrpc::Code;

use crate::service::{health, sandbox, Service, ServiceError};

/// The `AgentService` implementation handed to the ttrpc server.
pub struct Rpc {
    svc: Arc<Service>,
}

impl Rpc {
    pub fn new(svc: Arc<Service>) -> Rpc {
        Rpc { svc }
    }
}

/// The ttrpc status for a service error.
pub fn to_status(err: &ServiceError) -> ttrpc::Error {
    let code = match err {
        ServiceError::Unimplemented { .. } => Code::UNIMPLEMENTED,
        ServiceError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
        ServiceError::Internal { .. } => Code::INTERNAL,
    };
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, err))
}

/// Runs one request's work inside the `rpc` span and maps its error.
async fn handle<T>(
    rpc: &'static str,
    work: impl Future<Output = Result<T, ServiceError>>,
) -> ttrpc::Result<T> {
    async move {
        debug!("request");
        let result = work.await;
        match &result {
            Ok(_) => debug!("ok"),
            Err(e) => warn!(error = %e, "failed"),
        }
        result.map_err(|e| to_status(&e))
    }
    .instrument(info_span!("rpc", rpc))
    .await
}

fn unimplemented<T>(rpc: &'static str) -> ttrpc::Result<T> {
    let err = ServiceError::Unimplemented { rpc };
    debug!(rpc, "unimplemented RPC called");
    Err(to_status(&err))
}

#[async_trait]
impl AgentService for Rpc {
    // ---- health
    async fn check(
        &self,
        _ctx: &TtrpcContext,
        req: CheckRequest,
    ) -> ttrpc::Result<HealthCheckResponse> {
        handle("Check", async { Ok(health::do_check(&req)) }).await
    }
    async fn version(
        &self,
        _ctx: &TtrpcContext,
        req: CheckRequest,
    ) -> ttrpc::Result<VersionResponse> {
        handle("Version", async { health::do_version(&req) }).await
    }

    // ---- sandbox
    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        handle("DestroySandbox", async {
            sandbox::do_destroy_sandbox(&self.svc, &req)
        })
        .await
    }

    // ---- not implemented yet (containers, processes, I/O, events, network: next issue)
    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        _req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        unimplemented("CreateSandbox")
    }
    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        _req: CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        unimplemented("CreateContainer")
    }
    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        _req: StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        unimplemented("StartContainer")
    }
    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        _req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        unimplemented("RemoveContainer")
    }
    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        _req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        unimplemented("PauseContainer")
    }
    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        _req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        unimplemented("ResumeContainer")
    }
    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        _req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        unimplemented("UpdateContainer")
    }
    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        _req: ContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        unimplemented("StatsContainer")
    }
    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        _req: ContainerRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        unimplemented("ListProcesses")
    }
    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        _req: ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        unimplemented("ExecProcess")
    }
    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        _req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        unimplemented("SignalProcess")
    }
    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        _req: ProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        unimplemented("WaitProcess")
    }
    async fn resize_tty(
        &self,
        _ctx: &TtrpcContext,
        _req: ResizeTtyRequest,
    ) -> ttrpc::Result<Empty> {
        unimplemented("ResizeTty")
    }
    async fn close_stdin(&self, _ctx: &TtrpcContext, _req: ProcessRequest) -> ttrpc::Result<Empty> {
        unimplemented("CloseStdin")
    }
    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        _req: WriteStreamRequest,
    ) -> ttrpc::Result<WriteStreamResponse> {
        unimplemented("WriteStdin")
    }
    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        _req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        unimplemented("ReadStdout")
    }
    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        _req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        unimplemented("ReadStderr")
    }
    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        _req: GetOomEventRequest,
    ) -> ttrpc::Result<OomEvent> {
        unimplemented("GetOomEvent")
    }
    async fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        _req: UpdateInterfaceRequest,
    ) -> ttrpc::Result<Interface> {
        unimplemented("UpdateInterface")
    }
    async fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        _req: UpdateRoutesRequest,
    ) -> ttrpc::Result<Routes> {
        unimplemented("UpdateRoutes")
    }
    async fn list_interfaces(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<Interfaces> {
        unimplemented("ListInterfaces")
    }
    async fn list_routes(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<Routes> {
        unimplemented("ListRoutes")
    }
}

//! The ttrpc handlers: one thin method per RPC of `hull_proto::AgentService`.
//!
//! Every handler does the same four things, in this order: open a span named after the
//! RPC, check the request against the agent policy (`Service::admit`, for the RPCs it
//! has rules for), call `service::<area>::do_xxx(req)`, map the error to
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

use crate::policy::check::Request;
use crate::service::{
    container, debug as debug_rpc, health, io, network, process, sandbox, Service, ServiceError,
};

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
        ServiceError::NotFound(_) => Code::NOT_FOUND,
        ServiceError::AlreadyExists(_) => Code::ALREADY_EXISTS,
        ServiceError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
        ServiceError::Cancelled(_) => Code::CANCELLED,
        ServiceError::PermissionDenied(_) => Code::PERMISSION_DENIED,
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
    // ---- fault injection
    async fn debug_crash_agent(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<Empty> {
        handle("DebugCrashAgent", async {
            debug_rpc::do_debug_crash_agent(&self.svc)
        })
        .await
    }

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
    async fn guest_stats(
        &self,
        _ctx: &TtrpcContext,
        _req: Empty,
    ) -> ttrpc::Result<GuestStatsResponse> {
        handle("GuestStats", async { health::do_guest_stats(&self.svc) }).await
    }

    // ---- restore
    async fn set_identity(
        &self,
        _ctx: &TtrpcContext,
        req: SetIdentityRequest,
    ) -> ttrpc::Result<SetIdentityResponse> {
        handle("SetIdentity", async {
            sandbox::do_set_identity(&self.svc, &req)
        })
        .await
    }

    async fn prepare_caches(
        &self,
        _ctx: &TtrpcContext,
        req: PrepareCachesRequest,
    ) -> ttrpc::Result<PrepareCachesResponse> {
        handle("PrepareCaches", async {
            container::do_prepare_caches(&req)
        })
        .await
    }

    // ---- sandbox
    async fn destroy_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: DestroySandboxRequest,
    ) -> ttrpc::Result<Empty> {
        handle(
            "DestroySandbox",
            sandbox::do_destroy_sandbox(&self.svc, &req),
        )
        .await
    }

    async fn create_sandbox(
        &self,
        _ctx: &TtrpcContext,
        req: CreateSandboxRequest,
    ) -> ttrpc::Result<Empty> {
        handle("CreateSandbox", async {
            self.svc.admit(Request::CreateSandbox(&req))?;
            sandbox::do_create_sandbox(&self.svc, &req)
        })
        .await
    }

    // ---- containers
    async fn create_container(
        &self,
        _ctx: &TtrpcContext,
        req: CreateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        handle("CreateContainer", async {
            self.svc.admit(Request::CreateContainer(&req))?;
            container::do_create_container(&self.svc, &req)
        })
        .await
    }
    async fn start_container(
        &self,
        _ctx: &TtrpcContext,
        req: StartContainerRequest,
    ) -> ttrpc::Result<Empty> {
        handle("StartContainer", async {
            container::do_start_container(&self.svc, &req)
        })
        .await
    }
    async fn remove_container(
        &self,
        _ctx: &TtrpcContext,
        req: RemoveContainerRequest,
    ) -> ttrpc::Result<Empty> {
        handle(
            "RemoveContainer",
            container::do_remove_container(&self.svc, &req),
        )
        .await
    }
    async fn pause_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        handle("PauseContainer", async {
            container::do_pause(&self.svc, &req)
        })
        .await
    }
    async fn resume_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<Empty> {
        handle("ResumeContainer", async {
            container::do_resume(&self.svc, &req)
        })
        .await
    }
    async fn update_container(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateContainerRequest,
    ) -> ttrpc::Result<Empty> {
        handle("UpdateContainer", async {
            self.svc.admit(Request::UpdateContainer(&req))?;
            container::do_update(&self.svc, &req)
        })
        .await
    }
    async fn stats_container(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<StatsContainerResponse> {
        handle("StatsContainer", async {
            container::do_stats(&self.svc, &req)
        })
        .await
    }
    async fn list_processes(
        &self,
        _ctx: &TtrpcContext,
        req: ContainerRequest,
    ) -> ttrpc::Result<ListProcessesResponse> {
        handle("ListProcesses", async {
            container::do_list_processes(&self.svc, &req)
        })
        .await
    }

    // ---- processes
    async fn exec_process(
        &self,
        _ctx: &TtrpcContext,
        req: ExecProcessRequest,
    ) -> ttrpc::Result<Empty> {
        handle("ExecProcess", async {
            self.svc.admit(Request::ExecProcess(&req))?;
            process::do_exec(&self.svc, &req)
        })
        .await
    }
    async fn signal_process(
        &self,
        _ctx: &TtrpcContext,
        req: SignalProcessRequest,
    ) -> ttrpc::Result<Empty> {
        handle("SignalProcess", async {
            process::do_signal(&self.svc, &req)
        })
        .await
    }
    async fn wait_process(
        &self,
        _ctx: &TtrpcContext,
        req: ProcessRequest,
    ) -> ttrpc::Result<WaitProcessResponse> {
        handle("WaitProcess", process::do_wait(&self.svc, &req)).await
    }
    async fn resize_tty(&self, _ctx: &TtrpcContext, req: ResizeTtyRequest) -> ttrpc::Result<Empty> {
        handle("ResizeTty", async { process::do_resize(&self.svc, &req) }).await
    }
    async fn close_stdin(&self, _ctx: &TtrpcContext, req: ProcessRequest) -> ttrpc::Result<Empty> {
        handle("CloseStdin", process::do_close_stdin(&self.svc, &req)).await
    }

    // ---- process I/O
    async fn write_stdin(
        &self,
        _ctx: &TtrpcContext,
        req: WriteStreamRequest,
    ) -> ttrpc::Result<WriteStreamResponse> {
        handle("WriteStdin", io::do_write_stdin(&self.svc, &req)).await
    }
    async fn read_stdout(
        &self,
        _ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        handle("ReadStdout", io::do_read_stdout(&self.svc, &req)).await
    }
    async fn read_stderr(
        &self,
        _ctx: &TtrpcContext,
        req: ReadStreamRequest,
    ) -> ttrpc::Result<ReadStreamResponse> {
        handle("ReadStderr", io::do_read_stderr(&self.svc, &req)).await
    }

    // ---- events
    async fn get_oom_event(
        &self,
        _ctx: &TtrpcContext,
        req: GetOomEventRequest,
    ) -> ttrpc::Result<OomEvent> {
        handle("GetOomEvent", process::do_get_oom_event(&self.svc, &req)).await
    }

    // ---- guest network
    async fn update_interface(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateInterfaceRequest,
    ) -> ttrpc::Result<Interface> {
        handle("UpdateInterface", network::do_update_interface(&req)).await
    }
    async fn update_routes(
        &self,
        _ctx: &TtrpcContext,
        req: UpdateRoutesRequest,
    ) -> ttrpc::Result<Routes> {
        handle("UpdateRoutes", network::do_update_routes(&req)).await
    }
    // ---- not implemented yet
    async fn list_interfaces(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<Interfaces> {
        unimplemented("ListInterfaces")
    }
    async fn list_routes(&self, _ctx: &TtrpcContext, _req: Empty) -> ttrpc::Result<Routes> {
        unimplemented("ListRoutes")
    }
}

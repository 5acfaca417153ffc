//! containerd's Task service (task API v2 over ttrpc), thin: each request is checked,
//! handed to [`Service`], and its error mapped to a ttrpc status containerd shows.

use std::sync::Arc;

use async_trait::async_trait;
use containerd_shim::util::convert_to_any;
use containerd_shim_protos::api::{
    CloseIORequest, ConnectRequest, ConnectResponse, CreateTaskRequest, CreateTaskResponse,
    DeleteRequest, DeleteResponse, Empty, ExecProcessRequest, KillRequest, PauseRequest,
    PidsRequest, PidsResponse, ProcessInfo, ResizePtyRequest, ResumeRequest, ShutdownRequest,
    StartRequest, StartResponse, StateRequest, StateResponse, StatsRequest, StatsResponse,
    UpdateTaskRequest, WaitRequest, WaitResponse,
};
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self, Code};

use super::io::StdioPaths;
use super::service::Service;
use super::{convert, options, ShimError};

pub struct TaskService {
    svc: Arc<Service>,
}

impl TaskService {
    pub fn new(svc: Arc<Service>) -> TaskService {
        TaskService { svc }
    }
}

fn status(e: ShimError) -> ttrpc::Error {
    let code = match &e {
        ShimError::NotFound(_) => Code::NOT_FOUND,
        ShimError::AlreadyExists(_) => Code::ALREADY_EXISTS,
        ShimError::FailedPrecondition(_) => Code::FAILED_PRECONDITION,
        ShimError::InvalidArgument(_) => Code::INVALID_ARGUMENT,
        ShimError::Unimplemented(_) => Code::UNIMPLEMENTED,
        ShimError::Internal(_) => Code::INTERNAL,
    };
    tracing::warn!(error = %e, "request failed");
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, e.to_string()))
}

type Reply<T> = ttrpc::Result<T>;

#[async_trait]
impl Task for TaskService {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: CreateTaskRequest,
    ) -> Reply<CreateTaskResponse> {
        let _s = tracing::info_span!("task_create", id = %req.id).entered();
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(status(ShimError::Unimplemented(
                "restoring from a checkpoint is not supported by hull".into(),
            )));
        }
        let opts = match req.options.as_ref() {
            Some(any) => options::parse(&any.type_url, &any.value),
            None => Ok(Default::default()),
        }
        .map_err(status)?;
        let create = super::service::CreateRequest {
            id: req.id.clone(),
            bundle: req.bundle.clone().into(),
            rootfs: req.rootfs.clone(),
            stdio: StdioPaths {
                stdin: req.stdin.clone(),
                stdout: req.stdout.clone(),
                stderr: req.stderr.clone(),
                terminal: req.terminal,
            },
            options: opts,
        };
        drop(_s);
        let pid = self.svc.create(create).await.map_err(status)?;
        Ok(CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(&self, _ctx: &TtrpcContext, req: StartRequest) -> Reply<StartResponse> {
        let pid = self
            .svc
            .start(&req.id, &req.exec_id)
            .await
            .map_err(status)?;
        Ok(StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn state(&self, _ctx: &TtrpcContext, req: StateRequest) -> Reply<StateResponse> {
        let c = self.svc.container(&req.id).map_err(status)?;
        let p = c.process(&req.exec_id).map_err(status)?;
        let st = c.status(&p);
        let exit = p.exit();
        Ok(StateResponse {
            id: req.id.clone(),
            exec_id: req.exec_id.clone(),
            bundle: c.bundle.to_string_lossy().into_owned(),
            pid: self.svc.vm_pid().await,
            status: convert::status(st).into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exit_status: exit.as_ref().map(|e| e.status).unwrap_or(0),
            exited_at: exit.map(|e| e.at).into(),
            ..Default::default()
        })
    }

    async fn delete(&self, _ctx: &TtrpcContext, req: DeleteRequest) -> Reply<DeleteResponse> {
        let (pid, exit) = self
            .svc
            .delete(&req.id, &req.exec_id)
            .await
            .map_err(status)?;
        Ok(DeleteResponse {
            pid,
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn pids(&self, _ctx: &TtrpcContext, req: PidsRequest) -> Reply<PidsResponse> {
        let procs = self.svc.pids(&req.id).await.map_err(status)?;
        Ok(PidsResponse {
            processes: procs
                .into_iter()
                .map(|(pid, _exec)| ProcessInfo {
                    pid: u32::try_from(pid).unwrap_or(0),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        })
    }

    async fn pause(&self, _ctx: &TtrpcContext, req: PauseRequest) -> Reply<Empty> {
        self.svc.pause(&req.id).await.map_err(status)?;
        Ok(Empty::new())
    }

    async fn resume(&self, _ctx: &TtrpcContext, req: ResumeRequest) -> Reply<Empty> {
        self.svc.resume(&req.id).await.map_err(status)?;
        Ok(Empty::new())
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: containerd_shim_protos::api::CheckpointTaskRequest,
    ) -> Reply<Empty> {
        Err(status(ShimError::Unimplemented(
            "checkpoint is not supported by hull (a VM's containers cannot be checkpointed with CRIU)".into(),
        )))
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: KillRequest) -> Reply<Empty> {
        self.svc
            .kill(&req.id, &req.exec_id, req.signal, req.all)
            .await
            .map_err(status)?;
        Ok(Empty::new())
    }

    async fn exec(&self, _ctx: &TtrpcContext, req: ExecProcessRequest) -> Reply<Empty> {
        let spec = req.spec.as_ref().ok_or_else(|| {
            status(ShimError::InvalidArgument(
                "exec without a process spec".into(),
            ))
        })?;
        let stdio = StdioPaths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        self.svc
            .exec(&req.id, &req.exec_id, stdio, &spec.value)
            .await
            .map_err(status)?;
        Ok(Empty::new())
    }

    async fn resize_pty(&self, _ctx: &TtrpcContext, req: ResizePtyRequest) -> Reply<Empty> {
        self.svc
            .resize_pty(&req.id, &req.exec_id, req.width, req.height)
            .await
            .map_err(status)?;
        Ok(Empty::new())
    }

    async fn close_io(&self, _ctx: &TtrpcContext, req: CloseIORequest) -> Reply<Empty> {
        if req.stdin {
            self.svc
                .close_io(&req.id, &req.exec_id)
                .await
                .map_err(status)?;
        }
        Ok(Empty::new())
    }

    async fn update(&self, _ctx: &TtrpcContext, req: UpdateTaskRequest) -> Reply<Empty> {
        let resources = req.resources.as_ref().ok_or_else(|| {
            status(ShimError::InvalidArgument(
                "update without resources".into(),
            ))
        })?;
        // containerd sends the OCI LinuxResources as JSON in the Any.
        self.svc
            .update(&req.id, resources.value.clone())
            .await
            .map_err(status)?;
        Ok(Empty::new())
    }

    async fn wait(&self, _ctx: &TtrpcContext, req: WaitRequest) -> Reply<WaitResponse> {
        let c = self.svc.container(&req.id).map_err(status)?;
        let p = c.process(&req.exec_id).map_err(status)?;
        let exit = p.wait().await;
        Ok(WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(exit.at),
            ..Default::default()
        })
    }

    async fn stats(&self, _ctx: &TtrpcContext, req: StatsRequest) -> Reply<StatsResponse> {
        let stats = self.svc.stats(&req.id).await.map_err(status)?;
        let metrics = convert::metrics(&stats);
        let any = convert_to_any(Box::new(metrics))
            .map_err(|e| status(ShimError::internal(format!("encoding metrics: {e}"))))?;
        Ok(StatsResponse {
            stats: MessageField::some(any),
            ..Default::default()
        })
    }

    async fn connect(&self, _ctx: &TtrpcContext, _req: ConnectRequest) -> Reply<ConnectResponse> {
        Ok(ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: self.svc.vm_pid().await,
            ..Default::default()
        })
    }

    async fn shutdown(&self, _ctx: &TtrpcContext, req: ShutdownRequest) -> Reply<Empty> {
        self.svc.shutdown(req.now).await;
        Ok(Empty::new())
    }
}

//! Events to containerd (`/tasks/*` topics) through the shim crate's publisher, which
//! queues and retries them. Publishing never fails a request: a lost event is logged.

use containerd_shim::asynchronous::publisher::RemotePublisher;
use containerd_shim_protos::events::task::{
    TaskCreate, TaskDelete, TaskExecAdded, TaskExecStarted, TaskExit, TaskIO, TaskOOM, TaskPaused,
    TaskResumed, TaskStart,
};
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::context::Context;

pub struct Events {
    publisher: RemotePublisher,
    namespace: String,
}

impl Events {
    /// containerd's namespace of this shim's tasks.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn new(publisher: RemotePublisher, namespace: String) -> Events {
        Events {
            publisher,
            namespace,
        }
    }

    async fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        if let Err(e) = self
            .publisher
            .publish(Context::default(), topic, &self.namespace, event)
            .await
        {
            tracing::warn!(topic, error = %e, "cannot publish event to containerd");
        }
    }

    pub async fn create(&self, cid: &str, bundle: &str, io: &super::io::StdioPaths, pid: u32) {
        let ev = TaskCreate {
            container_id: cid.into(),
            bundle: bundle.into(),
            io: MessageField::some(TaskIO {
                stdin: io.stdin.clone(),
                stdout: io.stdout.clone(),
                stderr: io.stderr.clone(),
                terminal: io.terminal,
                ..Default::default()
            }),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_CREATE_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn start(&self, cid: &str, pid: u32) {
        let ev = TaskStart {
            container_id: cid.into(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_START_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn exit(&self, cid: &str, exec_id: &str, pid: u32, status: u32, at: Timestamp) {
        let ev = TaskExit {
            container_id: cid.into(),
            id: if exec_id.is_empty() {
                cid.into()
            } else {
                exec_id.into()
            },
            pid,
            exit_status: status,
            exited_at: MessageField::some(at),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn oom(&self, cid: &str) {
        let ev = TaskOOM {
            container_id: cid.into(),
            ..Default::default()
        };
        self.publish(topics::TASK_OOM_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn exec_added(&self, cid: &str, exec_id: &str) {
        let ev = TaskExecAdded {
            container_id: cid.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_ADDED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn exec_started(&self, cid: &str, exec_id: &str, pid: u32) {
        let ev = TaskExecStarted {
            container_id: cid.into(),
            exec_id: exec_id.into(),
            pid,
            ..Default::default()
        };
        self.publish(topics::TASK_EXEC_STARTED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn paused(&self, cid: &str) {
        let ev = TaskPaused {
            container_id: cid.into(),
            ..Default::default()
        };
        self.publish(topics::TASK_PAUSED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn resumed(&self, cid: &str) {
        let ev = TaskResumed {
            container_id: cid.into(),
            ..Default::default()
        };
        self.publish(topics::TASK_RESUMED_EVENT_TOPIC, Box::new(ev))
            .await;
    }

    pub async fn delete(&self, cid: &str, pid: u32, status: u32, at: Timestamp) {
        let ev = TaskDelete {
            container_id: cid.into(),
            id: cid.into(),
            pid,
            exit_status: status,
            exited_at: MessageField::some(at),
            ..Default::default()
        };
        self.publish(topics::TASK_DELETE_EVENT_TOPIC, Box::new(ev))
            .await;
    }
}

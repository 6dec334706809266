//! berth's task API (`berth.tasks.v1`), served to berthctl on the same socket as the CRI.
//! Its methods answer `Unimplemented` until per-pod shims exist to serve them.

use berth_proto::tasks::tasks_server::{Tasks, TasksServer};
use berth_proto::tasks::{
    ExecProcessRequest, ExecProcessResponse, GetTaskRequest, GetTaskResponse, KillTaskRequest,
    KillTaskResponse, ListPidsRequest, ListPidsResponse, ListShimsRequest, ListShimsResponse,
    ListTasksRequest, ListTasksResponse, MetricsRequest, MetricsResponse, WaitTaskRequest,
    WaitTaskResponse,
};
use tonic::{Request, Response, Status};

use crate::error::Error;

pub struct TaskApi;

pub fn service() -> TasksServer<TaskApi> {
    TasksServer::new(TaskApi)
}

#[tonic::async_trait]
impl Tasks for TaskApi {
    async fn list(
        &self,
        _: Request<ListTasksRequest>,
    ) -> Result<Response<ListTasksResponse>, Status> {
        Err(Error::NotImplemented("tasks.List").into())
    }

    async fn get(&self, _: Request<GetTaskRequest>) -> Result<Response<GetTaskResponse>, Status> {
        Err(Error::NotImplemented("tasks.Get").into())
    }

    async fn kill(
        &self,
        _: Request<KillTaskRequest>,
    ) -> Result<Response<KillTaskResponse>, Status> {
        Err(Error::NotImplemented("tasks.Kill").into())
    }

    async fn exec(
        &self,
        _: Request<ExecProcessRequest>,
    ) -> Result<Response<ExecProcessResponse>, Status> {
        Err(Error::NotImplemented("tasks.Exec").into())
    }

    async fn list_pids(
        &self,
        _: Request<ListPidsRequest>,
    ) -> Result<Response<ListPidsResponse>, Status> {
        Err(Error::NotImplemented("tasks.ListPids").into())
    }

    async fn wait(
        &self,
        _: Request<WaitTaskRequest>,
    ) -> Result<Response<WaitTaskResponse>, Status> {
        Err(Error::NotImplemented("tasks.Wait").into())
    }

    async fn metrics(
        &self,
        _: Request<MetricsRequest>,
    ) -> Result<Response<MetricsResponse>, Status> {
        Err(Error::NotImplemented("tasks.Metrics").into())
    }

    async fn list_shims(
        &self,
        _: Request<ListShimsRequest>,
    ) -> Result<Response<ListShimsResponse>, Status> {
        Err(Error::NotImplemented("tasks.ListShims").into())
    }
}

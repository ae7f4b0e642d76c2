//! Compares unary calls through the generated client with the same calls
//! through the generic `RpcClient` on the local bus (not a pass/fail test;
//! psrpc-bench is the benchmark). Run with
//! `cargo run --release -p psrpc-codegen-tests --example typed_vs_generic`.

use std::time::{Duration, Instant};

use psrpc::{Context, LocalBus, RpcClient};
use psrpc_codegen_tests::kinds::{self, KindsClient, KindsServer, Request, Response};

struct Echo;

#[psrpc::async_trait]
impl kinds::KindsServerImpl for Echo {
    async fn queue(&self, _ctx: Context, req: Request) -> psrpc::Result<Response> {
        Ok(Response {
            text: req.text,
            server: String::new(),
        })
    }
    async fn affinity(&self, _: Context, _: Request) -> psrpc::Result<Response> {
        Err(psrpc::Error::method_not_implemented())
    }
    fn affinity_affinity(&self, _: &Request) -> f32 {
        -1.0
    }
    async fn multi(&self, _: Context, _: Request) -> psrpc::Result<Response> {
        Err(psrpc::Error::method_not_implemented())
    }
    async fn direct(&self, _: Context, _: Request) -> psrpc::Result<Response> {
        Err(psrpc::Error::method_not_implemented())
    }
    async fn chat(
        &self,
        _: psrpc::ServerStream<kinds::ServerMessage, kinds::ClientMessage>,
    ) -> psrpc::Result<()> {
        Ok(())
    }
    async fn picky_chat(
        &self,
        _: psrpc::ServerStream<kinds::ServerMessage, kinds::ClientMessage>,
    ) -> psrpc::Result<()> {
        Ok(())
    }
    fn picky_chat_affinity(&self, _open: &psrpc::StreamOpen<'_>) -> f32 {
        -1.0
    }
    async fn node_queue(&self, _: Context, _: Request) -> psrpc::Result<Response> {
        Err(psrpc::Error::method_not_implemented())
    }
    async fn node_multi(&self, _: Context, _: Request) -> psrpc::Result<Response> {
        Err(psrpc::Error::method_not_implemented())
    }
    async fn room_call(&self, _: Context, _: Request) -> psrpc::Result<Response> {
        Err(psrpc::Error::method_not_implemented())
    }
    async fn old_multi(&self, _: Context, _: Request) -> psrpc::Result<Response> {
        Err(psrpc::Error::method_not_implemented())
    }
    async fn old_affinity(&self, _: Context, _: Request) -> psrpc::Result<Response> {
        Err(psrpc::Error::method_not_implemented())
    }
    fn old_affinity_affinity(&self, _: &Request) -> f32 {
        -1.0
    }
    async fn old_queue(&self, _: Context, _: Request) -> psrpc::Result<Response> {
        Err(psrpc::Error::method_not_implemented())
    }
}

const CALLS: usize = 20_000;
const ROUNDS: usize = 5;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> psrpc::Result<()> {
    let bus = LocalBus::new();
    let server = KindsServer::new(Echo, bus.clone()).await?;
    let typed = KindsClient::new(bus.clone()).await?;
    let generic = RpcClient::new(
        bus.clone(),
        kinds::kinds_methods::SERVICE,
        Default::default(),
    )
    .await?;
    let req = || Request { text: "x".into() };
    let (mut t_best, mut g_best) = (Duration::MAX, Duration::MAX);
    for _ in 0..ROUNDS {
        let start = Instant::now();
        for _ in 0..CALLS {
            typed.queue(req()).await?;
        }
        t_best = t_best.min(start.elapsed());
        let start = Instant::now();
        for _ in 0..CALLS {
            let _: Response = generic
                .unary(&kinds::kinds_methods::QUEUE, (), req())
                .await?;
        }
        g_best = g_best.min(start.elapsed());
    }
    let per = |d: Duration| d.as_secs_f64() * 1e6 / CALLS as f64;
    println!(
        "best of {ROUNDS} x {CALLS} sequential unary calls: generated {:.2} us/call, generic {:.2} us/call, ratio {:.3}",
        per(t_best),
        per(g_best),
        t_best.as_secs_f64() / g_best.as_secs_f64()
    );
    server.shutdown().await;
    Ok(())
}

//! Generates the example services from `proto/` with psrpc-build.

fn main() -> std::io::Result<()> {
    psrpc_build::compile_protos(
        &[
            "proto/looprpc/reservation.proto",
            "proto/lnrpc/lightning.proto",
            "proto/routerrpc/router.proto",
            "proto/scheduler/scheduler.proto",
            "proto/imp/api/websocket/websocket.proto",
            "proto/imp/api/messaging/messaging.proto",
        ],
        &["proto"],
    )
}

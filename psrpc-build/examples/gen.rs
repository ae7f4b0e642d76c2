//! Generates code for the given protos into a directory: `gen OUT INCLUDE PROTO...`.
fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    psrpc_build::configure()
        .out_dir(&args[0])
        .compile_protos(&args[2..], &[&args[1]])
}

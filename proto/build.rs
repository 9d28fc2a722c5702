fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/loaderd.proto");
    tonic_prost_build::configure()
        // Data chunks decode into `bytes::Bytes` that share the receive buffer: no copy.
        .bytes(".loaderd.v1.ReadChunk.data")
        .bytes(".loaderd.v1.PeerBlock.data")
        .compile_protos(&["proto/loaderd.proto"], &["proto"])?;
    Ok(())
}

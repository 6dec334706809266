fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=berth");
    tonic_prost_build::configure().compile_protos(&["berth/tasks/v1/tasks.proto"], &["."])?;
    Ok(())
}

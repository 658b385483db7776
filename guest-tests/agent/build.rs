//! Compiles the Vulkan triangle's shaders (src/triangle.wgsl) to SPIR-V with naga, validated,
//! into OUT_DIR: the agent embeds the words (no shader compiler in the guest).

use std::path::PathBuf;

fn main() {
    let src_path = "src/triangle.wgsl";
    println!("cargo:rerun-if-changed={src_path}");
    let src = std::fs::read_to_string(src_path).unwrap_or_else(|e| panic!("{src_path}: {e}"));
    let module = naga::front::wgsl::parse_str(&src)
        .unwrap_or_else(|e| panic!("{src_path}: {}", e.emit_to_string(&src)));
    let info = naga::valid::Validator::new(
        naga::valid::ValidationFlags::all(),
        naga::valid::Capabilities::empty(),
    )
    .validate(&module)
    .unwrap_or_else(|e| panic!("{src_path}: {e:?}"));
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("OUT_DIR"));
    for (stage, entry) in [
        (naga::ShaderStage::Vertex, "vs"),
        (naga::ShaderStage::Fragment, "fs"),
    ] {
        // SPIR-V 1.0: what every Vulkan 1.0 driver takes. Positions stay in Vulkan's clip
        // space (y down): naga would otherwise flip y to turn WebGPU's (y up) into Vulkan's.
        let mut options = naga::back::spv::Options {
            lang_version: (1, 0),
            ..Default::default()
        };
        options
            .flags
            .remove(naga::back::spv::WriterFlags::ADJUST_COORDINATE_SPACE);
        let pipeline = naga::back::spv::PipelineOptions {
            shader_stage: stage,
            entry_point: entry.into(),
        };
        let words = naga::back::spv::write_vec(&module, &info, &options, Some(&pipeline))
            .unwrap_or_else(|e| panic!("{src_path} {entry}: {e}"));
        let bytes: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
        let dest = out.join(format!("triangle_{entry}.spv"));
        std::fs::write(&dest, bytes).unwrap_or_else(|e| panic!("{}: {e}", dest.display()));
    }
}

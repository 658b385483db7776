// The agent's Vulkan triangle (src/vulkan.rs), compiled to SPIR-V by build.rs.
//
// Corners in the 128x128 picture's pixels: (8, 8), (55.5, 8), (8, 55.5). No pixel centre
// (x + 0.5, y + 0.5) lies on an edge, so coverage is exact without a tie-breaking rule: pixel
// (x, y) is inside when x >= 8, y >= 8 and x + y <= 62. NDC = pixel / 64 - 1, in Vulkan's
// clip space (y down; build.rs keeps naga from flipping y as WebGPU's would need).
@vertex
fn vs(@builtin(vertex_index) i: u32) -> @builtin(position) vec4<f32> {
    var corners = array<vec2<f32>, 3>(
        vec2(-0.875, -0.875),
        vec2(-0.1328125, -0.875),
        vec2(-0.875, -0.1328125),
    );
    return vec4<f32>(corners[i], 0.0, 1.0);
}

// Colour (0x30, 0xd0, 0x50): UNORM stores round(v * 255), exact for n / 255.
@fragment
fn fs() -> @location(0) vec4<f32> {
    return vec4<f32>(48.0 / 255.0, 208.0 / 255.0, 80.0 / 255.0, 1.0);
}

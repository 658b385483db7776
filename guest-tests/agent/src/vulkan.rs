//! Vulkan through Venus: a known picture rendered offscreen, read back through host-visible
//! memory the guest maps (RESOURCE_MAP_BLOB on the host), checked pixel by pixel, then shown
//! on every connector for the host to check in its capture.
//!
//! The picture (SIZE x SIZE): the whole image cleared to [`BACK`] (vkCmdClearColorImage), then
//! a centred square of half the size written with [`FRONT`] from a host-visible buffer
//! (vkCmdCopyBufferToImage), then a triangle in [`TRIANGLE`] drawn in the top left corner by a
//! graphics pipeline (a render pass, SPIR-V shaders from src/triangle.wgsl); then the image is
//! copied into a host-visible buffer and read.

use std::time::Duration;

use ash::vk;

use crate::{say, Card, Output};

/// Side of the picture, in pixels.
pub const SIZE: u32 = 128;
/// The clear colour (R, G, B).
pub const BACK: [u8; 3] = [0x20, 0x60, 0xc0];
/// The centre square's colour.
pub const FRONT: [u8; 3] = [0xf0, 0xa0, 0x10];

/// The triangle's colour.
pub const TRIANGLE: [u8; 3] = [0x30, 0xd0, 0x50];

fn inside(x: u32, y: u32, size: u32) -> bool {
    let (lo, hi) = (size / 4, size * 3 / 4);
    (lo..hi).contains(&x) && (lo..hi).contains(&y)
}

/// Pixel (x, y) of the SIZE x SIZE picture lies in the triangle (see src/triangle.wgsl: no
/// pixel centre is on an edge, so this is exact).
fn in_triangle(x: u32, y: u32) -> bool {
    x >= 8 && y >= 8 && x + y <= 62
}

/// The picture's colour at (x, y).
fn expected(x: u32, y: u32) -> [u8; 3] {
    if in_triangle(x, y) {
        TRIANGLE
    } else if inside(x, y, SIZE) {
        FRONT
    } else {
        BACK
    }
}

/// The triangle's shaders as SPIR-V (build.rs).
const VS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/triangle_vs.spv"));
const FS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/triangle_fs.spv"));

/// What draws the triangle into the image: a render pass that keeps the image's contents, its
/// framebuffer, and a pipeline with the viewport fixed to the whole picture.
struct Triangle<'a> {
    dev: &'a ash::Device,
    view: vk::ImageView,
    pass: vk::RenderPass,
    framebuffer: vk::Framebuffer,
    layout: vk::PipelineLayout,
    pipeline: vk::Pipeline,
}

impl Drop for Triangle<'_> {
    fn drop(&mut self) {
        // SAFETY: all made from `dev` (null handles are ignored), used by no pending command.
        unsafe {
            self.dev.destroy_pipeline(self.pipeline, None);
            self.dev.destroy_pipeline_layout(self.layout, None);
            self.dev.destroy_framebuffer(self.framebuffer, None);
            self.dev.destroy_render_pass(self.pass, None);
            self.dev.destroy_image_view(self.view, None);
        }
    }
}

fn shader(dev: &ash::Device, spv: &[u8]) -> Result<vk::ShaderModule, String> {
    let words =
        ash::util::read_spv(&mut std::io::Cursor::new(spv)).map_err(|e| format!("SPIR-V: {e}"))?;
    // SAFETY: valid SPIR-V words (naga validated them at build time).
    unsafe { dev.create_shader_module(&vk::ShaderModuleCreateInfo::default().code(&words), None) }
        .map_err(vkerr("vkCreateShaderModule"))
}

impl<'a> Triangle<'a> {
    fn new(dev: &'a ash::Device, image: vk::Image) -> Result<Triangle<'a>, String> {
        let mut t = Triangle {
            dev,
            view: vk::ImageView::null(),
            pass: vk::RenderPass::null(),
            framebuffer: vk::Framebuffer::null(),
            layout: vk::PipelineLayout::null(),
            pipeline: vk::Pipeline::null(),
        };
        let range = vk::ImageSubresourceRange::default()
            .aspect_mask(vk::ImageAspectFlags::COLOR)
            .level_count(1)
            .layer_count(1);
        // SAFETY: an image of this device made with COLOR_ATTACHMENT usage; destroyed in drop.
        t.view = unsafe {
            dev.create_image_view(
                &vk::ImageViewCreateInfo::default()
                    .image(image)
                    .view_type(vk::ImageViewType::TYPE_2D)
                    .format(vk::Format::R8G8B8A8_UNORM)
                    .subresource_range(range),
                None,
            )
        }
        .map_err(vkerr("vkCreateImageView"))?;
        // The image comes in and goes out as a colour attachment; the barriers around the
        // render pass move it from and to the transfers.
        let attachment = [vk::AttachmentDescription::default()
            .format(vk::Format::R8G8B8A8_UNORM)
            .samples(vk::SampleCountFlags::TYPE_1)
            .load_op(vk::AttachmentLoadOp::LOAD)
            .store_op(vk::AttachmentStoreOp::STORE)
            .initial_layout(vk::ImageLayout::COLOR_ATTACHMENT_OPTIMAL)
            .final_layout(vk::ImageLayout::COLOR_ATTACHMENT_OPTIMAL)];
        let color = [vk::AttachmentReference::default()
            .attachment(0)
            .layout(vk::ImageLayout::COLOR_ATTACHMENT_OPTIMAL)];
        let subpass = [vk::SubpassDescription::default()
            .pipeline_bind_point(vk::PipelineBindPoint::GRAPHICS)
            .color_attachments(&color)];
        // SAFETY: valid create info; destroyed in drop.
        t.pass = unsafe {
            dev.create_render_pass(
                &vk::RenderPassCreateInfo::default()
                    .attachments(&attachment)
                    .subpasses(&subpass),
                None,
            )
        }
        .map_err(vkerr("vkCreateRenderPass"))?;
        let views = [t.view];
        // SAFETY: the view and pass above, of the image's size; destroyed in drop.
        t.framebuffer = unsafe {
            dev.create_framebuffer(
                &vk::FramebufferCreateInfo::default()
                    .render_pass(t.pass)
                    .attachments(&views)
                    .width(SIZE)
                    .height(SIZE)
                    .layers(1),
                None,
            )
        }
        .map_err(vkerr("vkCreateFramebuffer"))?;
        // SAFETY: an empty layout (no descriptors, no push constants); destroyed in drop.
        t.layout =
            unsafe { dev.create_pipeline_layout(&vk::PipelineLayoutCreateInfo::default(), None) }
                .map_err(vkerr("vkCreatePipelineLayout"))?;
        let vs = shader(dev, VS)?;
        let fs = shader(dev, FS).inspect_err(|_| {
            // SAFETY: made just above, used by nothing.
            unsafe { dev.destroy_shader_module(vs, None) }
        })?;
        let stages = [
            vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::VERTEX)
                .module(vs)
                .name(c"vs"),
            vk::PipelineShaderStageCreateInfo::default()
                .stage(vk::ShaderStageFlags::FRAGMENT)
                .module(fs)
                .name(c"fs"),
        ];
        let vertex_input = vk::PipelineVertexInputStateCreateInfo::default();
        let assembly = vk::PipelineInputAssemblyStateCreateInfo::default()
            .topology(vk::PrimitiveTopology::TRIANGLE_LIST);
        let viewport = [vk::Viewport {
            x: 0.0,
            y: 0.0,
            width: SIZE as f32,
            height: SIZE as f32,
            min_depth: 0.0,
            max_depth: 1.0,
        }];
        let scissor = [vk::Rect2D {
            offset: vk::Offset2D { x: 0, y: 0 },
            extent: vk::Extent2D {
                width: SIZE,
                height: SIZE,
            },
        }];
        let viewport_state = vk::PipelineViewportStateCreateInfo::default()
            .viewports(&viewport)
            .scissors(&scissor);
        let raster = vk::PipelineRasterizationStateCreateInfo::default()
            .polygon_mode(vk::PolygonMode::FILL)
            .cull_mode(vk::CullModeFlags::NONE)
            .line_width(1.0);
        let multisample = vk::PipelineMultisampleStateCreateInfo::default()
            .rasterization_samples(vk::SampleCountFlags::TYPE_1);
        let blend_attachment = [vk::PipelineColorBlendAttachmentState::default()
            .color_write_mask(vk::ColorComponentFlags::RGBA)];
        let blend = vk::PipelineColorBlendStateCreateInfo::default().attachments(&blend_attachment);
        let info = [vk::GraphicsPipelineCreateInfo::default()
            .stages(&stages)
            .vertex_input_state(&vertex_input)
            .input_assembly_state(&assembly)
            .viewport_state(&viewport_state)
            .rasterization_state(&raster)
            .multisample_state(&multisample)
            .color_blend_state(&blend)
            .layout(t.layout)
            .render_pass(t.pass)
            .subpass(0)];
        // SAFETY: every state the pipeline needs is given, on objects of this device; the
        // shader modules are destroyed once the pipeline exists (it keeps its own code).
        let made = unsafe {
            let r = dev.create_graphics_pipelines(vk::PipelineCache::null(), &info, None);
            dev.destroy_shader_module(vs, None);
            dev.destroy_shader_module(fs, None);
            r
        };
        t.pipeline = made.map_err(|(_, e)| format!("vkCreateGraphicsPipelines: {e}"))?[0];
        Ok(t)
    }

    /// Records the triangle's render pass into `cb`.
    fn record(&self, cb: vk::CommandBuffer) {
        let area = vk::Rect2D {
            offset: vk::Offset2D { x: 0, y: 0 },
            extent: vk::Extent2D {
                width: SIZE,
                height: SIZE,
            },
        };
        // SAFETY: `cb` is recording; pass, framebuffer and pipeline belong together.
        unsafe {
            self.dev.cmd_begin_render_pass(
                cb,
                &vk::RenderPassBeginInfo::default()
                    .render_pass(self.pass)
                    .framebuffer(self.framebuffer)
                    .render_area(area),
                vk::SubpassContents::INLINE,
            );
            self.dev
                .cmd_bind_pipeline(cb, vk::PipelineBindPoint::GRAPHICS, self.pipeline);
            self.dev.cmd_draw(cb, 3, 1, 0, 0);
            self.dev.cmd_end_render_pass(cb);
        }
    }
}

fn vkerr(what: &'static str) -> impl Fn(vk::Result) -> String {
    move |e| format!("{what}: {e}")
}

struct Mem<'a> {
    dev: &'a ash::Device,
    buffer: vk::Buffer,
    memory: vk::DeviceMemory,
}

impl Drop for Mem<'_> {
    fn drop(&mut self) {
        // SAFETY: both were made from `dev` and are no longer used by any command.
        unsafe {
            self.dev.destroy_buffer(self.buffer, None);
            self.dev.free_memory(self.memory, None);
        }
    }
}

fn memory_type(
    props: &vk::PhysicalDeviceMemoryProperties,
    bits: u32,
    want: vk::MemoryPropertyFlags,
) -> Result<u32, String> {
    (0..props.memory_type_count)
        .find(|&i| {
            bits & (1 << i) != 0 && props.memory_types[i as usize].property_flags.contains(want)
        })
        .ok_or_else(|| format!("no memory type with flags {:#x}", want.as_raw()))
}

/// A host-visible, coherent buffer of `size` bytes.
fn host_buffer<'a>(
    dev: &'a ash::Device,
    props: &vk::PhysicalDeviceMemoryProperties,
    size: u64,
    usage: vk::BufferUsageFlags,
) -> Result<Mem<'a>, String> {
    let info = vk::BufferCreateInfo::default().size(size).usage(usage);
    // SAFETY: valid create info; the buffer is destroyed by Mem's drop.
    let buffer = unsafe { dev.create_buffer(&info, None) }.map_err(vkerr("vkCreateBuffer"))?;
    // SAFETY: a buffer of this device.
    let req = unsafe { dev.get_buffer_memory_requirements(buffer) };
    let ty = memory_type(
        props,
        req.memory_type_bits,
        vk::MemoryPropertyFlags::HOST_VISIBLE | vk::MemoryPropertyFlags::HOST_COHERENT,
    )?;
    let alloc = vk::MemoryAllocateInfo::default()
        .allocation_size(req.size)
        .memory_type_index(ty);
    // SAFETY: valid allocate info.
    let memory = unsafe { dev.allocate_memory(&alloc, None) }.map_err(vkerr("vkAllocateMemory"))?;
    let m = Mem {
        dev,
        buffer,
        memory,
    };
    // SAFETY: fresh memory of a type the buffer accepts, bound once.
    unsafe { dev.bind_buffer_memory(buffer, memory, 0) }.map_err(vkerr("vkBindBufferMemory"))?;
    Ok(m)
}

/// Renders, reads back and checks the picture; returns the device's name and the pixels
/// (RGBA, SIZE x SIZE).
fn render() -> Result<(String, Vec<u8>), String> {
    // SAFETY: loads the guest's Vulkan loader; its functions are used through ash only.
    let entry = unsafe { ash::Entry::load() }.map_err(|e| format!("Vulkan loader: {e}"))?;
    let app = vk::ApplicationInfo::default()
        .application_name(c"vhost-gpu guest agent")
        .api_version(vk::API_VERSION_1_1);
    // SAFETY: valid create info.
    let instance = unsafe {
        entry.create_instance(
            &vk::InstanceCreateInfo::default().application_info(&app),
            None,
        )
    }
    .map_err(vkerr("vkCreateInstance"))?;
    // SAFETY: a live instance.
    let pd = *unsafe { instance.enumerate_physical_devices() }
        .map_err(vkerr("vkEnumeratePhysicalDevices"))?
        .first()
        .ok_or("no Vulkan device")?;
    // SAFETY: a device of this instance.
    let props = unsafe { instance.get_physical_device_properties(pd) };
    let name = props
        .device_name_as_c_str()
        .map(|c| c.to_string_lossy().into_owned())
        .unwrap_or_default();
    // SAFETY: as above.
    let mem_props = unsafe { instance.get_physical_device_memory_properties(pd) };
    // SAFETY: as above.
    let family = unsafe { instance.get_physical_device_queue_family_properties(pd) }
        .iter()
        .position(|q| q.queue_flags.contains(vk::QueueFlags::GRAPHICS))
        .ok_or("no graphics queue")? as u32;
    let prio = [1.0f32];
    let qinfo = [vk::DeviceQueueCreateInfo::default()
        .queue_family_index(family)
        .queue_priorities(&prio)];
    // SAFETY: valid create info for this physical device.
    let dev = unsafe {
        instance.create_device(
            pd,
            &vk::DeviceCreateInfo::default().queue_create_infos(&qinfo),
            None,
        )
    }
    .map_err(vkerr("vkCreateDevice"))?;
    let result = (|| -> Result<Vec<u8>, String> {
        // SAFETY: family and index exist (one queue was asked for).
        let queue = unsafe { dev.get_device_queue(family, 0) };
        let image_info = vk::ImageCreateInfo::default()
            .image_type(vk::ImageType::TYPE_2D)
            .format(vk::Format::R8G8B8A8_UNORM)
            .extent(vk::Extent3D {
                width: SIZE,
                height: SIZE,
                depth: 1,
            })
            .mip_levels(1)
            .array_layers(1)
            .samples(vk::SampleCountFlags::TYPE_1)
            .tiling(vk::ImageTiling::OPTIMAL)
            .usage(
                vk::ImageUsageFlags::TRANSFER_DST
                    | vk::ImageUsageFlags::TRANSFER_SRC
                    | vk::ImageUsageFlags::COLOR_ATTACHMENT,
            );
        // SAFETY: valid create info; destroyed below.
        let image =
            unsafe { dev.create_image(&image_info, None) }.map_err(vkerr("vkCreateImage"))?;
        // SAFETY: an image of this device.
        let req = unsafe { dev.get_image_memory_requirements(image) };
        let ty = memory_type(
            &mem_props,
            req.memory_type_bits,
            vk::MemoryPropertyFlags::DEVICE_LOCAL,
        )?;
        // SAFETY: valid allocate info.
        let image_mem = unsafe {
            dev.allocate_memory(
                &vk::MemoryAllocateInfo::default()
                    .allocation_size(req.size)
                    .memory_type_index(ty),
                None,
            )
        }
        .map_err(vkerr("vkAllocateMemory (image)"))?;
        // SAFETY: fresh memory bound once.
        unsafe { dev.bind_image_memory(image, image_mem, 0) }
            .map_err(vkerr("vkBindImageMemory"))?;
        let triangle = Triangle::new(&dev, image)?;
        let half = SIZE / 2;
        let upload = host_buffer(
            &dev,
            &mem_props,
            u64::from(half * half * 4),
            vk::BufferUsageFlags::TRANSFER_SRC,
        )?;
        let readback = host_buffer(
            &dev,
            &mem_props,
            u64::from(SIZE * SIZE * 4),
            vk::BufferUsageFlags::TRANSFER_DST,
        )?;
        // The square's pixels, written through the guest's mapping of host-visible memory.
        // SAFETY: host-visible memory of at least half*half*4 bytes, mapped once, unmapped below.
        unsafe {
            let p = dev
                .map_memory(
                    upload.memory,
                    0,
                    vk::WHOLE_SIZE,
                    vk::MemoryMapFlags::empty(),
                )
                .map_err(vkerr("vkMapMemory (upload)"))?
                .cast::<u8>();
            let s = std::slice::from_raw_parts_mut(p, (half * half * 4) as usize);
            for px in s.chunks_exact_mut(4) {
                px.copy_from_slice(&[FRONT[0], FRONT[1], FRONT[2], 0xff]);
            }
            dev.unmap_memory(upload.memory);
        }
        let pool_info = vk::CommandPoolCreateInfo::default().queue_family_index(family);
        // SAFETY: valid create info; destroyed below.
        let pool = unsafe { dev.create_command_pool(&pool_info, None) }
            .map_err(vkerr("vkCreateCommandPool"))?;
        // SAFETY: one primary buffer from this pool.
        let cb = unsafe {
            dev.allocate_command_buffers(
                &vk::CommandBufferAllocateInfo::default()
                    .command_pool(pool)
                    .command_buffer_count(1),
            )
        }
        .map_err(vkerr("vkAllocateCommandBuffers"))?[0];
        let range = vk::ImageSubresourceRange::default()
            .aspect_mask(vk::ImageAspectFlags::COLOR)
            .level_count(1)
            .layer_count(1);
        let layers = vk::ImageSubresourceLayers::default()
            .aspect_mask(vk::ImageAspectFlags::COLOR)
            .layer_count(1);
        // One image barrier after `from_stage`, before `to_stage`.
        let barrier = |from_stage, to_stage, old, new, src, dst| {
            let b = vk::ImageMemoryBarrier::default()
                .old_layout(old)
                .new_layout(new)
                .src_access_mask(src)
                .dst_access_mask(dst)
                .image(image)
                .subresource_range(range);
            // SAFETY: recorded into `cb` while it records (below), on this device's image.
            unsafe {
                dev.cmd_pipeline_barrier(
                    cb,
                    from_stage,
                    to_stage,
                    vk::DependencyFlags::empty(),
                    &[],
                    &[],
                    &[b],
                )
            };
        };
        let to_f = |c: u8| f32::from(c) / 255.0;
        // SAFETY: commands recorded into a fresh buffer on objects of this device, all alive
        // until the fence below has signalled.
        unsafe {
            dev.begin_command_buffer(cb, &vk::CommandBufferBeginInfo::default())
                .map_err(vkerr("vkBeginCommandBuffer"))?;
            let (top, transfer, draw) = (
                vk::PipelineStageFlags::TOP_OF_PIPE,
                vk::PipelineStageFlags::TRANSFER,
                vk::PipelineStageFlags::COLOR_ATTACHMENT_OUTPUT,
            );
            barrier(
                top,
                transfer,
                vk::ImageLayout::UNDEFINED,
                vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                vk::AccessFlags::empty(),
                vk::AccessFlags::TRANSFER_WRITE,
            );
            dev.cmd_clear_color_image(
                cb,
                image,
                vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                &vk::ClearColorValue {
                    float32: [to_f(BACK[0]), to_f(BACK[1]), to_f(BACK[2]), 1.0],
                },
                &[range],
            );
            barrier(
                transfer,
                transfer,
                vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                vk::AccessFlags::TRANSFER_WRITE,
                vk::AccessFlags::TRANSFER_WRITE,
            );
            dev.cmd_copy_buffer_to_image(
                cb,
                upload.buffer,
                image,
                vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                &[vk::BufferImageCopy::default()
                    .image_subresource(layers)
                    .image_offset(vk::Offset3D {
                        x: (SIZE / 4) as i32,
                        y: (SIZE / 4) as i32,
                        z: 0,
                    })
                    .image_extent(vk::Extent3D {
                        width: half,
                        height: half,
                        depth: 1,
                    })],
            );
            barrier(
                transfer,
                draw,
                vk::ImageLayout::TRANSFER_DST_OPTIMAL,
                vk::ImageLayout::COLOR_ATTACHMENT_OPTIMAL,
                vk::AccessFlags::TRANSFER_WRITE,
                vk::AccessFlags::COLOR_ATTACHMENT_READ | vk::AccessFlags::COLOR_ATTACHMENT_WRITE,
            );
            triangle.record(cb);
            barrier(
                draw,
                transfer,
                vk::ImageLayout::COLOR_ATTACHMENT_OPTIMAL,
                vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
                vk::AccessFlags::COLOR_ATTACHMENT_WRITE,
                vk::AccessFlags::TRANSFER_READ,
            );
            dev.cmd_copy_image_to_buffer(
                cb,
                image,
                vk::ImageLayout::TRANSFER_SRC_OPTIMAL,
                readback.buffer,
                &[vk::BufferImageCopy::default()
                    .image_subresource(layers)
                    .image_extent(vk::Extent3D {
                        width: SIZE,
                        height: SIZE,
                        depth: 1,
                    })],
            );
            dev.end_command_buffer(cb)
                .map_err(vkerr("vkEndCommandBuffer"))?;
            let fence = dev
                .create_fence(&vk::FenceCreateInfo::default(), None)
                .map_err(vkerr("vkCreateFence"))?;
            let cbs = [cb];
            dev.queue_submit(
                queue,
                &[vk::SubmitInfo::default().command_buffers(&cbs)],
                fence,
            )
            .map_err(vkerr("vkQueueSubmit"))?;
            dev.wait_for_fences(&[fence], true, 30_000_000_000)
                .map_err(vkerr("vkWaitForFences"))?;
            dev.destroy_fence(fence, None);
        }
        let mut px = vec![0u8; (SIZE * SIZE * 4) as usize];
        // SAFETY: the copy has finished (fence); host-visible coherent memory of this size.
        unsafe {
            let p = dev
                .map_memory(
                    readback.memory,
                    0,
                    vk::WHOLE_SIZE,
                    vk::MemoryMapFlags::empty(),
                )
                .map_err(vkerr("vkMapMemory (readback)"))?
                .cast::<u8>();
            let n = px.len();
            px.copy_from_slice(std::slice::from_raw_parts(p, n));
            dev.unmap_memory(readback.memory);
            dev.destroy_command_pool(pool, None);
            drop(triangle);
            dev.destroy_image(image, None);
            dev.free_memory(image_mem, None);
        }
        Ok(px)
    })();
    // SAFETY: every object made from the device is gone (Mem drops ran in the closure).
    unsafe {
        dev.destroy_device(None);
        instance.destroy_instance(None);
    }
    Ok((name, result?))
}

/// Renders and checks the picture; returns its pixels (RGBA).
pub fn render_and_check() -> Result<Vec<u8>, String> {
    let (name, px) = render()?;
    say(format!("vulkan device {name}"));
    let mut bad = 0usize;
    for y in 0..SIZE {
        for x in 0..SIZE {
            let i = ((y * SIZE + x) * 4) as usize;
            let want = expected(x, y);
            if px[i..i + 3] != want {
                if bad < 3 {
                    say(format!(
                        "vulkan pixel ({x},{y}) {:?}, expected {want:?}",
                        &px[i..i + 4]
                    ));
                }
                bad += 1;
            }
        }
    }
    if bad > 0 {
        return Err(format!(
            "vulkan readback: {bad} of {} pixels wrong",
            SIZE * SIZE
        ));
    }
    say(format!("vulkan readback pass {} pixels", SIZE * SIZE));
    Ok(px)
}

/// Shows the picture scaled to every connector for `hold`.
pub fn show(card: &Card, outs: &[Output], px: &[u8], hold: Duration) -> Result<(), String> {
    crate::show_dumb(card, outs, hold, "vulkan", |x, y, w, h| {
        let i = (((y * SIZE / h) * SIZE + x * SIZE / w) * 4) as usize;
        [px[i], px[i + 1], px[i + 2]]
    })
}

//! EDID 1.4 base blocks for the scanouts' modes.
//!
//! Per scanout a 128-byte base block and a CTA-861 extension block:
//! - the base block's detailed timing descriptor is the scanout's mode, the preferred one (CVT
//!   reduced blanking, 60 Hz, or lower where the pixel clock field would overflow); then a
//!   range-limits descriptor, the monitor name and a serial number;
//! - the other modes a desktop user expects to pick: 640x480, 800x600 and 1024x768 as
//!   established timings; 1280x720, 1280x800, 1280x1024, 1440x900, 1600x900, 1680x1050,
//!   1920x1080 and 1920x1200 as standard timings; 2560x1440, 2560x1600 and 3840x2160 (too wide
//!   for standard timings) as detailed timings in the extension block.
//!
//! QEMU's own EDID (hw/display/edid-generate.c) lists neither 1280x800 nor 2560x1440.

/// Largest width or height a detailed timing descriptor can carry (12 bits).
pub const MAX_EDID_DIMENSION: u32 = 4095;

const HBLANK: u32 = 160;
const HFRONT: u32 = 48;
const HSYNC: u32 = 32;
const VFRONT: u32 = 3;
const VSYNC: u32 = 6;
const VBLANK: u32 = 40;

/// Refresh rate the descriptor uses for a `width` x `height` mode.
pub fn refresh_hz(width: u32, height: u32) -> u32 {
    let total = (u64::from(width) + u64::from(HBLANK)) * (u64::from(height) + u64::from(VBLANK));
    // The pixel clock field is 16 bits of 10 kHz.
    let max_clock = 65_535u64 * 10_000;
    (max_clock / total.max(1)).clamp(1, 60) as u32
}

fn put_name(block: &mut [u8], tag: u8, text: &str) {
    block[3] = tag;
    let bytes = text.as_bytes();
    for (i, slot) in block[5..18].iter_mut().enumerate() {
        *slot = match i.cmp(&bytes.len()) {
            std::cmp::Ordering::Less => bytes[i],
            std::cmp::Ordering::Equal => b'\n',
            std::cmp::Ordering::Greater => b' ',
        };
    }
}

/// Standard timings (8 slots): width, height, and the aspect code (0 16:10, 1 4:3, 2 5:4,
/// 3 16:9); all 60 Hz.
const STANDARD: [(u32, u32, u8); 8] = [
    (1280, 720, 3),
    (1280, 800, 0),
    (1280, 1024, 2),
    (1440, 900, 0),
    (1600, 900, 3),
    (1680, 1050, 0),
    (1920, 1080, 3),
    (1920, 1200, 0),
];

/// Modes too wide for a standard timing, as detailed timings in the extension block.
const LARGE: [(u32, u32); 3] = [(2560, 1440), (2560, 1600), (3840, 2160)];

/// Size of what [`generate`] returns: the base block and one extension.
pub const EDID_SIZE: usize = 256;

/// Writes an 18-byte detailed timing descriptor for `w` x `h` (CVT reduced blanking).
fn detailed_timing(d: &mut [u8], w: u32, h: u32) {
    let w_mm = u64::from(w) * 254 / 960;
    let h_mm = u64::from(h) * 254 / 960;
    let hz = refresh_hz(w, h);
    let htotal = w + HBLANK;
    let vtotal = h + VBLANK;
    let clock_10khz = (u64::from(htotal) * u64::from(vtotal) * u64::from(hz) / 10_000) as u16;
    d[0..2].copy_from_slice(&clock_10khz.to_le_bytes());
    d[2] = (w & 0xff) as u8;
    d[3] = (HBLANK & 0xff) as u8;
    d[4] = (((w >> 8) & 0xf) << 4 | ((HBLANK >> 8) & 0xf)) as u8;
    d[5] = (h & 0xff) as u8;
    d[6] = (VBLANK & 0xff) as u8;
    d[7] = (((h >> 8) & 0xf) << 4 | ((VBLANK >> 8) & 0xf)) as u8;
    d[8] = (HFRONT & 0xff) as u8;
    d[9] = (HSYNC & 0xff) as u8;
    d[10] = (((VFRONT & 0xf) << 4) | (VSYNC & 0xf)) as u8;
    d[11] = 0;
    d[12] = (w_mm & 0xff) as u8;
    d[13] = (h_mm & 0xff) as u8;
    d[14] = ((((w_mm >> 8) & 0xf) << 4) | ((h_mm >> 8) & 0xf)) as u8;
    d[17] = 0x1a; // digital separate sync, +h -v
}

fn checksum(block: &mut [u8]) {
    let sum = block[..127].iter().fold(0u8, |a, b| a.wrapping_add(*b));
    block[127] = 0u8.wrapping_sub(sum);
}

/// Builds the EDID for one scanout. `width`/`height` are clamped to 1..=[`MAX_EDID_DIMENSION`]
/// (the CLI refuses larger modes, so this only guards the arithmetic).
pub fn generate(scanout: u32, width: u32, height: u32) -> [u8; EDID_SIZE] {
    let w = width.clamp(1, MAX_EDID_DIMENSION);
    let h = height.clamp(1, MAX_EDID_DIMENSION);
    let mut all = [0u8; EDID_SIZE];
    let (e, ext) = all.split_at_mut(128);
    e[0..8].copy_from_slice(&[0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x00]);
    // Manufacturer "VHG", packed 5 bits a letter, big-endian.
    let id =
        ((u16::from(b'V' - b'@')) << 10) | ((u16::from(b'H' - b'@')) << 5) | u16::from(b'G' - b'@');
    e[8..10].copy_from_slice(&id.to_be_bytes());
    e[10..12].copy_from_slice(&0x1234u16.to_le_bytes()); // product code
    e[12..16].copy_from_slice(&(scanout + 1).to_le_bytes()); // serial
    e[16] = 1; // week
    e[17] = (2026 - 1990) as u8; // year
    e[18] = 1; // EDID 1.4
    e[19] = 4;
    e[20] = 0xa5; // digital, 8 bits per colour, DisplayPort
                  // Physical size in cm at 96 dpi (EDID stores cm; 1 in = 2.54 cm).
    let (w_mm, h_mm) = (u64::from(w) * 254 / 960, u64::from(h) * 254 / 960);
    e[21] = (w_mm / 10).clamp(1, 255) as u8;
    e[22] = (h_mm / 10).clamp(1, 255) as u8;
    e[23] = 120; // gamma 2.2
    e[24] = 0x06; // sRGB default, preferred timing is native
                  // sRGB chromaticity.
    e[25..35].copy_from_slice(&[0xee, 0x91, 0xa3, 0x54, 0x4c, 0x99, 0x26, 0x0f, 0x50, 0x54]);
    // Established timings: 640x480, 800x600 (byte 35), 1024x768 (byte 36), all 60 Hz.
    e[35] = (1 << 5) | 1;
    e[36] = 1 << 3;
    // Standard timings: (width / 8 - 31), then aspect and refresh - 60.
    for (i, &(sw, _, aspect)) in STANDARD.iter().enumerate() {
        e[38 + i * 2] = (sw / 8 - 31) as u8;
        e[39 + i * 2] = aspect << 6;
    }

    // The preferred mode.
    detailed_timing(&mut e[54..72], w, h);

    // Range limits: 1..60 Hz vertical, 1..255 kHz horizontal, max clock 660 MHz.
    let r = &mut e[72..90];
    r[3] = 0xfd;
    r[5] = 1;
    r[6] = 60;
    r[7] = 1;
    r[8] = 255;
    r[9] = 66;
    r[10] = 0x01; // range limits only
    r[11] = b'\n';
    for b in &mut r[12..18] {
        *b = b' ';
    }
    put_name(&mut e[90..108], 0xfc, "vhost-gpu");
    let serial = format!("VHG-{scanout}");
    put_name(&mut e[108..126], 0xff, &serial);

    e[126] = 1; // one extension
    checksum(e);

    // CTA-861 extension, revision 3: no data blocks, detailed timings from byte 4.
    ext[0] = 0x02;
    ext[1] = 0x03;
    ext[2] = 4;
    ext[3] = 0;
    for (i, &(lw, lh)) in LARGE.iter().enumerate() {
        detailed_timing(&mut ext[4 + i * 18..4 + (i + 1) * 18], lw, lh);
    }
    checksum(ext);
    all
}

/// The modes an EDID from [`generate`] lists: the preferred one first.
pub fn modes(edid: &[u8]) -> Vec<(u32, u32)> {
    let dtd = |d: &[u8]| {
        (
            u32::from(d[2]) | (u32::from(d[4] >> 4) << 8),
            u32::from(d[5]) | (u32::from(d[7] >> 4) << 8),
        )
    };
    let mut m = vec![dtd(&edid[54..72])];
    m.extend([(640, 480), (800, 600), (1024, 768)]);
    m.extend(STANDARD.iter().map(|&(w, h, _)| (w, h)));
    if edid.len() >= 256 && edid[128] == 0x02 {
        let mut at = 128 + usize::from(edid[130]);
        while at + 18 <= 255 && edid[at] | edid[at + 1] != 0 {
            m.push(dtd(&edid[at..at + 18]));
            at += 18;
        }
    }
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksum_and_mode() {
        let e = generate(0, 1920, 1080);
        assert_eq!(e[..128].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert_eq!(e[128..].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        let m = modes(&e);
        for want in [
            (1280, 800),
            (1920, 1080),
            (2560, 1440),
            (3840, 2160),
            (1024, 768),
        ] {
            assert!(m.contains(&want), "{want:?} in {m:?}");
        }
        assert_eq!(m[0], (1920, 1080));
        assert_eq!(&e[0..8], &[0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0]);
        let hactive = u32::from(e[56]) | (u32::from(e[58] >> 4) << 8);
        let vactive = u32::from(e[59]) | (u32::from(e[61] >> 4) << 8);
        assert_eq!((hactive, vactive), (1920, 1080));
    }

    #[test]
    fn huge_modes_lower_the_refresh_not_overflow() {
        let e = generate(15, 4095, 4095);
        assert_eq!(e[..128].iter().fold(0u8, |a, b| a.wrapping_add(*b)), 0);
        assert!(refresh_hz(4095, 4095) < 60);
        assert_eq!(refresh_hz(1280, 800), 60);
    }
}

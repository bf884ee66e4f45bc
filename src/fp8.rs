//! float8 e4m3 ("e4m3fn": no infinities, one NaN pattern per sign, largest finite 448) as the
//! cache stores it. This encoder is the definition every backend must match bit for bit.

/// The largest finite e4m3 value.
pub const E4M3_MAX: f32 = 448.0;

/// Encodes `x` as e4m3: round to nearest, ties to even; finite values and infinities beyond
/// +-448 saturate to +-448 (`0x7e` / `0xfe`); NaN stays NaN (`0x7f`, with the input's sign bit).
///
/// These are the semantics of CUDA's `__nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3)`.
pub fn e4m3_from_f32(x: f32) -> u8 {
    let bits = x.to_bits();
    let sign = ((bits >> 24) & 0x80) as u8;
    let magnitude = bits & 0x7fff_ffff;
    if magnitude > 0x7f80_0000 {
        return sign | 0x7f;
    }
    // 448.0 and above (infinity too) saturate. Below 448 rounding never reaches 0x7f.
    if magnitude >= 0x43e0_0000 {
        return sign | 0x7e;
    }
    // Below 2^-6 the result is a subnormal (a multiple of 2^-9) or zero. Scaling by 2^9 is exact,
    // so rounding the scaled value to an integer is the e4m3 rounding.
    if magnitude < 0x3c80_0000 {
        let scaled = f32::from_bits(magnitude) * 512.0;
        return sign | scaled.round_ties_even() as u8;
    }
    // Normal: rebias the exponent (127 -> 7) and keep 3 of the 23 mantissa bits, rounding the
    // 20 dropped bits to nearest even. A carry out of the mantissa correctly bumps the exponent.
    let exponent = (magnitude >> 23) + 7 - 127;
    let mantissa = magnitude & 0x7f_ffff;
    let mut encoded = (exponent << 3) | (mantissa >> 20);
    let dropped = mantissa & 0xf_ffff;
    const HALF: u32 = 0x8_0000;
    if dropped > HALF || (dropped == HALF && encoded & 1 == 1) {
        encoded += 1;
    }
    sign | encoded as u8
}

/// Decodes an e4m3 byte to f32 (exact).
pub fn e4m3_to_f32(byte: u8) -> f32 {
    let sign = if byte & 0x80 != 0 { -1.0 } else { 1.0 };
    let exponent = ((byte >> 3) & 0xf) as i32;
    let mantissa = (byte & 0x7) as f32;
    if byte & 0x7f == 0x7f {
        return f32::NAN;
    }
    if exponent == 0 {
        sign * mantissa * (2.0f32).powi(-9)
    } else {
        sign * (1.0 + mantissa / 8.0) * (2.0f32).powi(exponent - 7)
    }
}

/// The cache value of one input element: `x / scale` in f32, then encoded.
///
/// A NaN quotient's sign is fixed here rather than left to the processor (x86 and Arm differ):
/// a NaN input keeps its sign, a NaN scale gives its sign, and an invalid division (0 / 0,
/// inf / inf) gives a negative NaN, as x86's "default NaN" is.
pub fn quantize(x: f32, scale: f32) -> u8 {
    let quotient = x / scale;
    if quotient.is_nan() {
        let negative = if x.is_nan() {
            x.is_sign_negative()
        } else if scale.is_nan() {
            scale.is_sign_negative()
        } else {
            true
        };
        return if negative { 0xff } else { 0x7f };
    }
    e4m3_from_f32(quotient)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_values() {
        assert_eq!(e4m3_from_f32(0.0), 0x00);
        assert_eq!(e4m3_from_f32(-0.0), 0x80);
        assert_eq!(e4m3_from_f32(1.0), 0x38);
        assert_eq!(e4m3_from_f32(-2.0), 0xc0);
        assert_eq!(e4m3_from_f32(448.0), 0x7e);
        assert_eq!(e4m3_from_f32(1000.0), 0x7e);
        assert_eq!(e4m3_from_f32(-1.0e30), 0xfe);
        assert_eq!(e4m3_from_f32(f32::INFINITY), 0x7e);
        assert_eq!(e4m3_from_f32(f32::NEG_INFINITY), 0xfe);
        assert_eq!(e4m3_from_f32(f32::NAN), 0x7f);
        assert_eq!(e4m3_from_f32(-f32::NAN), 0xff);
        // Ties to even: 1.0625 is halfway between 1.0 (0x38) and 1.125 (0x39): even wins.
        assert_eq!(e4m3_from_f32(1.0625), 0x38);
        // 1.1875 is halfway between 1.125 (0x39) and 1.25 (0x3a): even wins.
        assert_eq!(e4m3_from_f32(1.1875), 0x3a);
        // Just above the tie rounds up.
        assert_eq!(e4m3_from_f32(f32::from_bits(1.0625f32.to_bits() + 1)), 0x39);
        // Subnormals: the smallest is 2^-9; half of it ties to zero (even), a bit more rounds up.
        assert_eq!(e4m3_from_f32(2.0f32.powi(-9)), 0x01);
        assert_eq!(e4m3_from_f32(2.0f32.powi(-10)), 0x00);
        assert_eq!(e4m3_from_f32(1.5 * 2.0f32.powi(-10)), 0x01);
        assert_eq!(e4m3_from_f32(3.0 * 2.0f32.powi(-10)), 0x02);
        // 7.5 * 2^-9 is a tie between the largest subnormal (7) and the smallest normal (8).
        assert_eq!(e4m3_from_f32(7.5 * 2.0f32.powi(-9)), 0x08);
        assert_eq!(e4m3_from_f32(2.0f32.powi(-6)), 0x08);
        // Largest value below the saturation threshold rounds within range.
        assert_eq!(e4m3_from_f32(447.0), 0x7e);
        assert_eq!(e4m3_from_f32(415.0), 0x7d);
    }

    #[test]
    fn nan_quotients_have_a_fixed_sign() {
        assert_eq!(quantize(f32::NAN, 2.0), 0x7f);
        assert_eq!(quantize(-f32::NAN, 2.0), 0xff);
        assert_eq!(quantize(-f32::NAN, -f32::NAN), 0xff);
        assert_eq!(quantize(1.0, f32::NAN), 0x7f);
        assert_eq!(quantize(1.0, -f32::NAN), 0xff);
        assert_eq!(quantize(0.0, 0.0), 0xff);
        assert_eq!(quantize(f32::INFINITY, f32::NEG_INFINITY), 0xff);
        assert_eq!(quantize(1.0, 0.0), 0x7e);
    }

    #[test]
    fn decode_inverts_encode_on_every_byte() {
        for byte in 0..=255u8 {
            if byte & 0x7f == 0x7f {
                assert!(e4m3_to_f32(byte).is_nan());
                continue;
            }
            assert_eq!(e4m3_from_f32(e4m3_to_f32(byte)), byte, "byte {byte:#04x}");
        }
    }
}

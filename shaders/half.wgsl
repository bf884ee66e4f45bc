// The f32 bits of a half (exact, subnormals and NaN payloads included: unpack2x16float needs a
// capability that not every adapter has). Shared by the built-in shader (build.rs joins this file
// to it) and the contract appended to users' shaders (hence the pkv_ prefix, which keeps it out
// of their names).
fn pkv_half_bits(h: u32) -> u32 {
    let sign = (h & 0x8000u) << 16u;
    let exponent = (h >> 10u) & 0x1fu;
    let mantissa = h & 0x3ffu;
    if exponent == 0x1fu {
        return sign | 0x7f800000u | (mantissa << 13u);
    }
    if exponent == 0u {
        if mantissa == 0u {
            return sign;
        }
        // mantissa * 2^-24: shift its leading one to bit 10.
        let normalise = countLeadingZeros(mantissa) - 21u;
        return sign | ((113u - normalise) << 23u) | (((mantissa << normalise) & 0x3ffu) << 13u);
    }
    return sign | ((exponent + 112u) << 23u) | (mantissa << 13u);
}

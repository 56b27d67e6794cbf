// Big-endian field access on raw buffers. Every caller checks the bounds first (the parser checks
// the message length once per command), so these only carry the standard library's debug checks.

extension UnsafeRawBufferPointer {
    @inline(__always)
    func loadBigEndian<T: FixedWidthInteger>(at offset: Int, as type: T.Type = T.self) -> T {
        T(bigEndian: loadUnaligned(fromByteOffset: offset, as: T.self))
    }
}

extension UnsafeMutableRawBufferPointer {
    @inline(__always)
    func storeBigEndian<T: FixedWidthInteger>(_ value: T, at offset: Int) {
        storeBytes(of: value.bigEndian, toByteOffset: offset, as: T.self)
    }

    /// Copies `source` to `offset`; the caller has checked that it fits.
    @inline(__always)
    func copyBytes(from source: UnsafeRawBufferPointer, at offset: Int) {
        guard let from = source.baseAddress, source.count > 0 else { return }
        precondition(offset >= 0 && offset + source.count <= count, "destination too small")
        baseAddress!.advanced(by: offset).copyMemory(from: from, byteCount: source.count)
    }
}

/// Lower-case hex of raw bytes, for descriptions (cold paths only).
func hexString(_ bytes: UnsafeRawBufferPointer) -> String {
    let digits: [UInt8] = Array("0123456789abcdef".utf8)
    var text = [UInt8]()
    text.reserveCapacity(bytes.count * 2)
    for byte in bytes {
        text.append(digits[Int(byte >> 4)])
        text.append(digits[Int(byte & 0x0F)])
    }
    return String(decoding: text, as: UTF8.self)
}

/// Parses lower- or upper-case hex into exactly `count` bytes, or nil.
func parseHex(_ text: some StringProtocol, count: Int) -> [UInt8]? {
    let utf8 = Array(text.utf8)
    guard utf8.count == count * 2 else { return nil }
    func nibble(_ c: UInt8) -> UInt8? {
        switch c {
        case UInt8(ascii: "0")...UInt8(ascii: "9"): c - UInt8(ascii: "0")
        case UInt8(ascii: "a")...UInt8(ascii: "f"): c - UInt8(ascii: "a") + 10
        case UInt8(ascii: "A")...UInt8(ascii: "F"): c - UInt8(ascii: "A") + 10
        default: nil
        }
    }
    var bytes = [UInt8]()
    bytes.reserveCapacity(count)
    var i = 0
    while i < utf8.count {
        guard let high = nibble(utf8[i]), let low = nibble(utf8[i + 1]) else { return nil }
        bytes.append(high << 4 | low)
        i += 2
    }
    return bytes
}

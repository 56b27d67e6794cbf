/// Sizes as people write them on command lines and in configuration: `262144`, `256K`, `1M`,
/// `1MiB`, `2G` (binary multiples).
public enum ByteCount {
    /// Parses a positive size.
    /// - Returns: the number of bytes, or nil for anything else (zero, negative, a bad suffix,
    ///   an overflow).
    public static func parse(_ text: String) -> Int? {
        var digits = Substring(text.uppercased())
        if digits.hasSuffix("IB") { digits = digits.dropLast(2) } else if digits.hasSuffix("B") { digits = digits.dropLast() }
        var scale = 1
        switch digits.last {
        case "K": scale = 1 << 10
        case "M": scale = 1 << 20
        case "G": scale = 1 << 30
        default: break
        }
        if scale > 1 { digits = digits.dropLast() }
        guard let value = Int(digits), value > 0 else { return nil }
        let (bytes, overflow) = value.multipliedReportingOverflow(by: scale)
        return overflow ? nil : bytes
    }

    /// A size for people: `64.0 MiB`.
    public static func format(_ bytes: Int) -> String {
        func tenths(_ value: Double) -> String {
            let scaled = (value * 10).rounded()
            return "\(Int(scaled) / 10).\(Int(scaled) % 10)"
        }
        if bytes >= 1 << 30 { return tenths(Double(bytes) / Double(1 << 30)) + " GiB" }
        if bytes >= 1 << 20 { return tenths(Double(bytes) / Double(1 << 20)) + " MiB" }
        if bytes >= 1 << 10 { return tenths(Double(bytes) / Double(1 << 10)) + " KiB" }
        return "\(bytes) B"
    }
}

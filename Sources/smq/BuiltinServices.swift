import SecureMQ


/// The services `smq worker` runs without code: for demos, tests and benchmarks.
enum BuiltinService: String, CaseIterable {
    /// The fragment back, unchanged.
    case echo
    /// The fragment's SHA-256 (32 bytes).
    case sha256
    /// ASCII letters upper-cased.
    case upper

    func handle(_ body: [UInt8]) -> [UInt8] {
        body.withUnsafeBytes { handle($0) }
    }

    /// The same, reading the fragment where it arrived.
    func handle(_ body: UnsafeRawBufferPointer) -> [UInt8] {
        switch self {
        case .echo: return Array(body)
        case .sha256: return SHA256.hash(body).bytes
        case .upper: return body.map { $0 >= 0x61 && $0 <= 0x7A ? $0 - 0x20 : $0 }
        }
    }
}

// libFuzzer entry point for the SMQ/1 codec and the certificate parser's byte-level input:
// any bytes must parse or throw a typed error, never crash, and a message that parses must
// survive an in-place rewrite and parse again. Built by scripts/fuzz (not by SwiftPM).

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzCodec(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let bytes = UnsafeRawBufferPointer(start: data, count: size)
    let limits = ProtocolLimits(maxFragment: 4096)
    guard let message = try? Message.parse(bytes, limits: limits) else { return 0 }
    if let fragment = message.fragment {
        // The broker's hot path: rewrite a copy in place, then it must still parse the same way.
        var copy = Array(bytes)
        copy.withUnsafeMutableBytes { raw in
            Fragment.rewriteCommandAndTag(in: raw, command: fragment.command == .submit ? .work : .result, tag: 0xDEAD_BEEF)
        }
        // Views point into the buffer they were parsed from: use them inside its scope only.
        let header = copy.withUnsafeBytes { (try? Message.parse($0, limits: limits))?.fragment?.header }
        precondition(header == fragment.header, "a rewritten fragment must parse to the same header")
        _ = SHA256.hash(fragment.body)
    }
    if let control = ControlMessage(message) {
        // Owned values re-encode to bytes that parse to the same command. (Not always to the same
        // value: an invalid-UTF-8 reason is repaired with U+FFFD, which can push it past the
        // 1 KiB a sender cuts reasons to.)
        let encoded = control.encoded()
        let again = encoded.withUnsafeBytes { (try? Message.parse($0, limits: limits)).flatMap(ControlMessage.init) }
        precondition(again?.command == control.command, "re-encoding \(control.command) made it unreadable")
    }
    return 0
}

import DequeModule
import Logging
@testable import SMQBroker
import SMQKeys
import SMQProtocol

/// A message the harness hands the core as a body: the bytes, owned, so the core's "forward this
/// kept message" can be checked against what was sent. The core never reads it.
final class TestBody {
    var bytes: [UInt8]
    init(_ bytes: [UInt8]) { self.bytes = bytes }
}

/// Records every effect; peers can be made "full" (not reading) or "gone".
final class RecordingSink: BrokerSink {
    enum Effect {
        case work(address: [UInt8], tag: UInt64, body: TestBody)
        case result(address: [UInt8], tag: UInt64, body: TestBody)
        case control(address: [UInt8], message: ControlMessage?, bytes: [UInt8])
    }

    var effects: [Effect] = []
    var full: Set<[UInt8]> = []
    var gone: Set<[UInt8]> = []
    var drainedCount = 0

    func forward(_ body: AnyObject, as command: Command, tag: UInt64, keep: Bool, to address: [UInt8]) -> SendOutcome {
        if gone.contains(address) { return .gone }
        if full.contains(address) { return .full }
        let body = body as! TestBody
        Fragment.rewriteCommandAndTag(in: UnsafeMutableRawBufferPointer(start: &body.bytes, count: body.bytes.count), command: command, tag: tag)
        effects.append(command == .work ? .work(address: address, tag: tag, body: body) : .result(address: address, tag: tag, body: body))
        return .sent
    }

    func send(_ bytes: [UInt8], to address: [UInt8]) -> SendOutcome {
        if gone.contains(address) { return .gone }
        if full.contains(address) { return .full }
        let parsed: ControlMessage? = bytes.withUnsafeBytes { raw in
            (try? Message.parse(raw, limits: .default)).flatMap { ControlMessage($0) }
        }
        effects.append(.control(address: address, message: parsed, bytes: bytes))
        return .sent
    }

    func drained() { drainedCount += 1 }

    func take() -> [Effect] {
        defer { effects.removeAll() }
        return effects
    }
}

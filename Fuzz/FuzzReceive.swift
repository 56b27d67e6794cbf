// libFuzzer entry point for the worker's and the client's receive paths: the input is a stream
// of messages from a (hostile) broker, each behind a 2-byte big-endian length. The worker's step
// (parse, then ReceivedWork: digest and every header field as Int) and the client's step (parse,
// then a Gatherer for one job whose count and window come from the first bytes; FAILED, BUSY and
// DISCONNECT read as owned values with escaped reasons) must never crash, and the gatherer must
// hand results over in index order, each index once. Built by scripts/fuzz (not by SwiftPM).

@_cdecl("LLVMFuzzerTestOneInput")
public func fuzzReceive(_ data: UnsafePointer<UInt8>, _ size: Int) -> CInt {
    let input = UnsafeRawBufferPointer(start: data, count: size)
    guard input.count >= 6 else { return 0 }
    // Job parameters: count 1 ... 2^32 − 1 (small ones likelier), window 1 ... 64.
    let rawCount = UInt32(input[0]) << 8 | UInt32(input[1])
    let count = input[2] & 1 == 0 ? max(1, rawCount % 9) : max(1, rawCount &* 65_537)
    let window = Int(input[3] % 64) + 1
    let jobID = JobID(high: 0x5EC0_E000_0000_0001, low: 0x0000_0000_0000_0002)
    let limits = ProtocolLimits(maxFragment: Int(input[4]) * 16 + 1)
    var gatherer = Gatherer(jobID: jobID, count: count, window: window)
    var hasher = SHA256()
    var handedOver: UInt32 = 0
    var position = 6
    while position + 2 <= input.count, !gatherer.isComplete {
        let length = Int(input[position]) << 8 | Int(input[position + 1])
        position += 2
        let end = min(position + length, input.count)
        let bytes = UnsafeRawBufferPointer(rebasing: input[position..<end])
        position = end
        let message: Message
        do throws(ProtocolError) {
            message = try Message.parse(bytes, limits: limits)
        } catch {
            // What a role logs about a dropped message must be printable.
            precondition(PeerText.isPrintable(error.description), "an error description carries raw peer bytes")
            continue
        }
        switch message {
        case .work(let fragment):
            // The worker's step.
            if let work = try? ReceivedWork(fragment, hasher: &hasher) {
                precondition(work.offset >= 0 && work.offset <= work.totalLength && work.index < work.count,
                             "an accepted WORK has an impossible place")
            }
        case .result(let fragment):
            // The client's step: the gatherer, then every held result that became deliverable.
            guard let outcome = try? gatherer.accept(header: fragment.header, body: fragment.body) else { return 0 }
            if outcome == .deliverNow {
                precondition(fragment.header.index == handedOver, "a result was handed over out of order")
                handedOver += 1
            }
            while (try? gatherer.deliverNextHeld({ index, _ in
                precondition(index == handedOver, "a held result was handed over out of order")
                handedOver += 1
            })) == true {}
        default:
            if let control = ControlMessage(message) {
                switch control {
                case .failed(_, _, _, let reason), .reject(_, _, _, let reason), .disconnect(let reason):
                    precondition(PeerText.isPrintable(reason), "a reason reached the role unescaped")
                default:
                    break
                }
            }
        }
    }
    precondition(handedOver == gatherer.nextIndex, "the gatherer and the caller disagree on what was handed over")
    return 0
}

import SMQProtocol

/// The SMQ/1 messages the roles send, built with the codec (SMQProtocol) in one place.
enum Wire {
    static func maxMessageSize(forFragment maxFragment: Int) -> Int {
        ProtocolLimits(maxFragment: maxFragment).maxMessageSize
    }

    static func pong() -> [UInt8] { ControlMessage.pong.encoded() }
    static func ping() -> [UInt8] { ControlMessage.ping.encoded() }
    static func heartbeat() -> [UInt8] { ControlMessage.heartbeat.encoded() }

    static func disconnect(reason: String) -> [UInt8] {
        ControlMessage.disconnect(reason: Reason.truncated(reason)).encoded()
    }

    static func failed(jobID: JobID, index: UInt32, code: FailureCode, reason: String) -> [UInt8] {
        ControlMessage.failed(jobID: jobID, index: index, code: code, reason: Reason.truncated(reason)).encoded()
    }

    static func busy(jobID: JobID, index: UInt32, retryAfterMs: UInt32) -> [UInt8] {
        ControlMessage.busy(jobID: jobID, index: index, retryAfterMilliseconds: retryAfterMs).encoded()
    }

    /// Turns a kept SUBMIT into WORK (or DONE into RESULT) in place: the body is not touched.
    static func rewrite(_ message: ZMQMessage, command: Command, tag: UInt64) {
        Fragment.rewriteCommandAndTag(in: message.mutableBytes, command: command, tag: tag)
    }

    /// A one-fragment RESULT the broker makes itself (mmi.*): tag 0, body = the status code.
    static func mmiResult(jobID: JobID, service: String, body: [UInt8]) -> [UInt8] {
        let header = FragmentHeader(jobID: jobID, index: 0, count: 1, offset: 0, totalLength: 0,
                                    length: UInt32(body.count), digest: SHA256.hash(body))
        let name = (try? ServiceName(validating: service)) ?? "mmi.service"
        return Fragment.encode(command: .result, tag: 0, service: name, header: header, body: body)
    }
}

public import CoreMetrics
public import SMQBroker

/// What a metrics exporter publishes about one broker: the core's figures and the CURVE
/// handshakes its context's ZAP handler decided.
public struct BrokerMetrics: Sendable {
    /// Counters, per-service and per-worker figures, limits (read on the broker's thread).
    public var core: BrokerMetricsSnapshot
    /// Handshakes admitted and refused by the ZAP handler of the broker's ``SecureContext``
    /// (shared by every server socket in that context: one per process in `secure-broker`).
    public var handshakesAdmitted: Int
    public var handshakesRefusedUnknownKey: Int
    public var handshakesRefusedNotCurve: Int
    public var handshakesMalformed: Int
}

extension Broker {
    /// A snapshot for a metrics exporter, taken on the broker's thread between two events (the
    /// hot path keeps only its in-place counters); nil once the broker has stopped.
    public func metrics() async -> BrokerMetrics? {
        let box = UncheckedBox(engine)
        guard let core = try? await thread.run({ () throws(SecureMQError) in box.value.core.metricsSnapshot() }) else { return nil }
        let zap = (try? context.zapHandler().statistics) ?? ZAPHandler.Counters()
        return BrokerMetrics(core: core, handshakesAdmitted: zap.allowed, handshakesRefusedUnknownKey: zap.denied - zap.deniedNotCurve,
                             handshakesRefusedNotCurve: zap.deniedNotCurve, handshakesMalformed: zap.malformed)
    }

    /// Starts recording each fragment's SUBMIT → first dispatch and SUBMIT → RESULT times into
    /// these timers (swift-metrics; a Prometheus histogram in `secure-broker`). Recording is
    /// one call per fragment on the broker's thread, with no allocation; until this is called
    /// the core only checks that no timer is set.
    public func recordLatencies(dispatch: CoreMetrics.Timer, result: CoreMetrics.Timer) async {
        let box = UncheckedBox((engine, dispatch, result))
        _ = try? await thread.run { () throws(SecureMQError) in
            let (engine, dispatch, result) = box.value
            engine.core.dispatchLatency = dispatch
            engine.core.resultLatency = result
        }
    }
}

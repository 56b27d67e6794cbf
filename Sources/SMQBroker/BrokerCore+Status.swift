import SMQProtocol

extension BrokerCore {
    /// Most bytes of an `mmi.status` reply: a broker with more services than fit says
    /// `"truncated":true` rather than sending a body a default client refuses.
    static let statusReportLimit = 60 * 1024

    /// The body of an `mmi.status` reply (C55): JSON with the broker's state and, for each
    /// service the asking key may submit to, its worker connections, queued fragments and
    /// fragments in flight. A key limited to some services sees only those (the list is not a
    /// directory of everyone's services).
    func statusReport(for asker: PeerKey) -> String {
        var inFlight: [String: Int] = [:]
        var workerConnections: [String: Int] = [:]
        for connection in activeWorkers.values where !connection.gone {
            guard let state = connection.worker else { continue }
            inFlight[state.service.name, default: 0] += state.inFlight
            workerConnections[state.service.name, default: 0] += 1
        }
        var body = "{\"protocol\":\(SMQProtocolVersion.current),\"draining\":\(draining),\"openJobs\":\(jobs.count),"
        body += "\"fragmentsHeld\":\(fragmentsHeld),\"bytesHeld\":\(bytesHeld),\"byteBudget\":\(rules.byteBudget),\"services\":["
        var first = true
        var truncated = false
        for name in services.keys.sorted() where asker.allows(service: name) {
            guard let queue = services[name] else { continue }
            let entry = "{\"name\":\(Self.jsonString(name)),\"workers\":\(workerConnections[name] ?? 0),"
                + "\"queued\":\(queue.queuedCount),\"inFlight\":\(inFlight[name] ?? 0)}"
            if body.utf8.count + entry.utf8.count + 32 > Self.statusReportLimit {
                truncated = true
                break
            }
            body += (first ? "" : ",") + entry
            first = false
        }
        return body + "],\"truncated\":\(truncated)}"
    }

    /// A JSON string literal. Service names are validated printable ASCII, but a quote or a
    /// backslash must still not break the document.
    static func jsonString(_ text: String) -> String {
        var out = "\""
        for scalar in text.unicodeScalars {
            switch scalar {
            case "\"": out += "\\\""
            case "\\": out += "\\\\"
            case _ where scalar.value < 0x20 || scalar.value >= 0x7F:
                let hex = String(scalar.value, radix: 16)
                out += "\\u" + String(repeating: "0", count: max(0, 4 - hex.count)) + hex
            default: out.unicodeScalars.append(scalar)
            }
        }
        return out + "\""
    }
}

import Foundation

/// Waits until `condition` holds, polling every 10 ms, with a deadline: for an event, never a
/// guessed time. The deadline only matters when the test fails.
func waitUntil(_ what: String, timeout: Duration = .seconds(60), _ condition: () throws -> Bool) async throws {
    let deadline = ContinuousClock.now + timeout
    while ContinuousClock.now < deadline {
        if try condition() { return }
        try await Task.sleep(for: .milliseconds(10))
    }
    throw HarnessError("timed out waiting for \(what)")
}

/// The size of a file, 0 while it does not exist: how far a process writing it has got.
func fileSize(_ path: String) -> Int {
    (try? FileManager.default.attributesOfItem(atPath: path)[.size] as? Int) ?? 0
}

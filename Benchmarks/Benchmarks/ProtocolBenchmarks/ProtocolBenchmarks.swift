import Benchmark
import SecureMQ

// Names use only [A-Za-z0-9.]: the threshold files are named after them, and benchmark 1.38.1
// writes them with spaces and punctuation replaced but looks them up unchanged.
//
// Malloc counts are the only thresholds (Thresholds/<swift version>/…json, checked by
// `swift package benchmark thresholds check`): they are the same on every run and every
// machine. Wall clock and throughput are printed for people, never checked.
let benchmarks: @Sendable () -> Void = {
    let reported: [BenchmarkMetric] = [.mallocCountTotal, .wallClock, .throughput]
    let mallocsOnly: [BenchmarkMetric: BenchmarkThresholds] = [.mallocCountTotal: .init(absolute: [.p90: 0])]
    func configuration(_ scaling: BenchmarkScalingFactor = .one, maxIterations: Int = 10_000) -> Benchmark.Configuration {
        .init(metrics: reported, timeUnits: .nanoseconds, warmupIterations: 3, scalingFactor: scaling,
              maxDuration: .seconds(2), maxIterations: maxIterations, thresholds: mallocsOnly)
    }

    let service: ServiceName = "bench"
    let jobID = JobID(high: 0x0123_4567_89AB_CDEF, low: 0xFEDC_BA98_7654_3210)

    // MARK: codec

    Benchmark("FragmentHeader.encodeDecode", configuration: configuration(.kilo)) { benchmark in
        let header = FragmentHeader(jobID: jobID, index: 7, count: 1024, offset: 7 << 20, totalLength: 1 << 30,
                                    length: 1 << 20, digest: SHA256.hash([UInt8](repeating: 1, count: 64)))
        let buffer = UnsafeMutableRawBufferPointer.allocate(byteCount: FragmentHeader.byteCount, alignment: 8)
        defer { buffer.deallocate() }
        benchmark.startMeasurement()
        for _ in benchmark.scaledIterations {
            header.write(to: buffer)
            blackHole(FragmentHeader(loadingFrom: UnsafeRawBufferPointer(buffer)))
        }
    }

    // What each benchmark does is in its comment; weights cycle 1…10 in the scheduler ones.
    // The broker's per-fragment codec work: parse a SUBMIT (every check of §2.2 but the digest,
    // which the broker does not compute) and rewrite it in place into WORK; then the same for the
    // worker's DONE into RESULT. No body is copied, so no malloc is expected.
    let mib = [UInt8](repeating: 0xA5, count: 1 << 20)
    let submit = Fragment.encode(command: .submit, tag: 0, service: service,
                                 header: FragmentHeader(jobID: jobID, index: 0, count: 1024, offset: 0, totalLength: 1 << 30,
                                                        length: UInt32(mib.count), digest: SHA256.hash(mib)), body: mib)
    let result = [UInt8](repeating: 0x5A, count: 16)
    let done = Fragment.encode(command: .done, tag: 42, service: service,
                               header: FragmentHeader(jobID: jobID, index: 0, count: 1024, offset: 0, totalLength: 0,
                                                      length: UInt32(result.count), digest: SHA256.hash(result)), body: result)

    Benchmark("Message.parseAndRewrite.submit1MiB", configuration: configuration(.kilo)) { benchmark in
        var message = submit
        message.withUnsafeMutableBytes { bytes in  // the copy-on-write copy happens here, not measured
            benchmark.startMeasurement()
            for iteration in benchmark.scaledIterations {
                guard case .submit(let fragment) = try? Message.parse(UnsafeRawBufferPointer(bytes)) else { fatalError("not a SUBMIT") }
                blackHole(fragment.header.index)
                Fragment.rewriteCommandAndTag(in: bytes, command: .work, tag: UInt64(iteration))
                Fragment.rewriteCommandAndTag(in: bytes, command: .submit, tag: 0)
            }
        }
    }

    Benchmark("Broker.codecPathPerFragment", configuration: configuration(.kilo)) { benchmark in
        var request = submit
        var reply = done
        request.withUnsafeMutableBytes { submitBytes in
            reply.withUnsafeMutableBytes { doneBytes in
                benchmark.startMeasurement()
                for iteration in benchmark.scaledIterations {
                    guard case .submit(let fragment) = try? Message.parse(UnsafeRawBufferPointer(submitBytes)),
                          fragment.service.matches(service) else { fatalError("not a SUBMIT") }
                    Fragment.rewriteCommandAndTag(in: submitBytes, command: .work, tag: UInt64(iteration))
                    guard case .done(let answer) = try? Message.parse(UnsafeRawBufferPointer(doneBytes)),
                          answer.header.index == fragment.header.index else { fatalError("not a DONE") }
                    Fragment.rewriteCommandAndTag(in: doneBytes, command: .result, tag: 0xABCD)
                    Fragment.rewriteCommandAndTag(in: submitBytes, command: .submit, tag: 0)
                    Fragment.rewriteCommandAndTag(in: doneBytes, command: .done, tag: 42)
                }
            }
        }
    }

    // MARK: pipeline (64 MiB in 256 KiB fragments: 256 fragments, SHA-256 of each)

    let payload = (0..<(64 << 20)).map { UInt8(truncatingIfNeeded: $0 &* 2_654_435_761 >> 13) }
    let fragmentSize = 256 << 10
    let headers: [FragmentHeader] = {
        var fragmenter = try! Fragmenter(jobID: jobID, totalLength: UInt64(payload.count), fragmentSize: fragmentSize)
        var out: [FragmentHeader] = []
        payload.withUnsafeBytes { bytes in
            while let (header, _) = try! fragmenter.next(in: bytes) { out.append(header) }
        }
        return out
    }()

    Benchmark("Fragmenter.64MiB.256KiBFragments", configuration: configuration(maxIterations: 20)) { benchmark in
        for _ in benchmark.scaledIterations {
            var fragmenter = try! Fragmenter(jobID: jobID, totalLength: UInt64(payload.count), fragmentSize: fragmentSize)
            payload.withUnsafeBytes { bytes in
                while let (header, _) = try! fragmenter.next(in: bytes) { blackHole(header.index) }
            }
            blackHole(fragmenter.jobDigest)
        }
    }

    func gather(order: [Int], benchmark: Benchmark) {
        for _ in benchmark.scaledIterations {
            var gatherer = Gatherer(jobID: jobID, count: UInt32(headers.count), window: 32)
            payload.withUnsafeBytes { bytes in
                for index in order {
                    let header = headers[index]
                    let body = UnsafeRawBufferPointer(rebasing: bytes[index * fragmentSize..<(index + 1) * fragmentSize])
                    if try! gatherer.accept(header: header, body: body) == .deliverNow {
                        while gatherer.deliverNextHeld({ index, body in blackHole(body.count + Int(index)) }) {}
                    }
                }
            }
            blackHole(try! gatherer.finish())
        }
    }

    Benchmark("Gatherer.64MiB.inOrder", configuration: configuration(maxIterations: 20)) { benchmark in
        gather(order: Array(headers.indices), benchmark: benchmark)
    }

    // Every pair swapped: half the results arrive early and are held (copied once) by the gatherer.
    Benchmark("Gatherer.64MiB.pairsSwapped", configuration: configuration(maxIterations: 20)) { benchmark in
        let swapped = headers.indices.map { $0 ^ 1 }
        gather(order: swapped, benchmark: benchmark)
    }

    // MARK: scheduler

    for workers in [10, 1_000, 10_000] {
        Benchmark("StrideScheduler.pick.\(workers)Workers", configuration: configuration(.kilo)) { benchmark in
            var scheduler = StrideScheduler<Int>()
            for id in 0..<workers { _ = scheduler.add(id, weight: 1 + id % 10) }
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations { blackHole(scheduler.pick()) }
        }

        // What the broker does per dispatch when a worker runs out of credit and gets it back.
        Benchmark("StrideScheduler.pickSuspendResume.\(workers)Workers", configuration: configuration(.kilo)) { benchmark in
            var scheduler = StrideScheduler<Int>()
            for id in 0..<workers { _ = scheduler.add(id, weight: 1 + id % 10) }
            benchmark.startMeasurement()
            for _ in benchmark.scaledIterations {
                guard let id = scheduler.pick() else { fatalError("no worker") }
                _ = scheduler.suspend(id)
                _ = scheduler.resume(id)
            }
        }
    }
}

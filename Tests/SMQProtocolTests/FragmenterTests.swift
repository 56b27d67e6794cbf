import Glibc
import SMQProtocol
import Testing

/// A temporary file, removed when the value goes away.
final class TemporaryFile {
    let path: String

    init(contents: [UInt8]) throws {
        var template = Array("/tmp/smq-fragmenter-XXXXXX".utf8CString)
        let fd = template.withUnsafeMutableBufferPointer { mkstemp($0.baseAddress!) }
        try #require(fd >= 0)
        path = template.withUnsafeBufferPointer { String(cString: $0.baseAddress!) }
        defer { close(fd) }
        try Self.write(fd, contents)
    }

    func append(_ bytes: [UInt8]) throws {
        let fd = open(path, O_WRONLY | O_APPEND)
        try #require(fd >= 0)
        defer { close(fd) }
        try Self.write(fd, bytes)
    }

    func truncate(to length: Int) throws {
        try #require(Glibc.truncate(path, off_t(length)) == 0)
    }

    private static func write(_ fd: Int32, _ bytes: [UInt8]) throws {
        var done = 0
        while done < bytes.count {
            let n = bytes.withUnsafeBytes { Glibc.write(fd, $0.baseAddress! + done, bytes.count - done) }
            try #require(n > 0)
            done += n
        }
    }

    deinit {
        unlink(path)
    }
}

/// A deterministic payload: a cheap generator, so multi-MiB payloads cost nothing to make.
func payload(_ count: Int, seed: UInt64 = 0x9E37_79B9_7F4A_7C15) -> [UInt8] {
    var state = seed
    return (0..<count).map { _ in
        state = state &* 6_364_136_223_846_793_005 &+ 1_442_695_040_888_963_407
        return UInt8(truncatingIfNeeded: state >> 56)
    }
}

/// Every header a fragmenter makes must satisfy the receiver's checks and describe `payload`.
func expectFragments(
    _ headers: [FragmentHeader], bodies: [[UInt8]], of payload: [UInt8], fragmentSize: Int, jobDigest: Digest?,
    sourceLocation: SourceLocation = #_sourceLocation
) {
    let expectedCount = max(1, (payload.count + fragmentSize - 1) / fragmentSize)
    #expect(headers.count == expectedCount, sourceLocation: sourceLocation)
    var offset = 0
    for (i, header) in headers.enumerated() {
        let length = min(fragmentSize, payload.count - offset)
        let slice = Array(payload[offset..<offset + length])
        #expect(header.index == UInt32(i), sourceLocation: sourceLocation)
        #expect(header.count == UInt32(expectedCount), sourceLocation: sourceLocation)
        #expect(header.offset == UInt64(offset), sourceLocation: sourceLocation)
        #expect(header.totalLength == UInt64(payload.count), sourceLocation: sourceLocation)
        #expect(header.length == UInt32(length), sourceLocation: sourceLocation)
        #expect(header.isLast == (i == expectedCount - 1), sourceLocation: sourceLocation)
        #expect(header.digest == SHA256.hash(slice), sourceLocation: sourceLocation)
        #expect(bodies[i] == slice, sourceLocation: sourceLocation)
        #expect(throws: Never.self, sourceLocation: sourceLocation) {
            try header.validate(bodyLength: length, isRequest: true, limits: .default)
        }
        offset += length
    }
    #expect(offset == payload.count, sourceLocation: sourceLocation)
    #expect(jobDigest == SHA256.hash(headers.flatMap(\.digest.bytes)), sourceLocation: sourceLocation)
}

let smallFragment = 4096

@Suite("Fragmenter")
struct FragmenterTests {
    static let sizes: [(Int, Int)] = [
        (0, smallFragment), (1, smallFragment), (smallFragment - 1, smallFragment), (smallFragment, smallFragment),
        (smallFragment + 1, smallFragment), (3 * smallFragment, smallFragment),
        (5 * (1 << 20) + 17, Fragmenter.defaultFragmentSize), (1 << 20, 1 << 20),
    ]

    @Test(arguments: sizes)
    func fromBytesInMemory(size: Int, fragmentSize: Int) throws {
        let bytes = payload(size)
        var fragmenter = try Fragmenter(jobID: .random(), totalLength: UInt64(size), fragmentSize: fragmentSize)
        var headers: [FragmentHeader] = []
        var bodies: [[UInt8]] = []
        try bytes.withUnsafeBytes { raw in
            while let (header, range) = try fragmenter.next(in: raw) {
                #expect(header.jobID == fragmenter.jobID)
                headers.append(header)
                bodies.append(Array(bytes[range]))
            }
        }
        #expect(fragmenter.isFinished)
        #expect(fragmenter.nextLength == nil)
        expectFragments(headers, bodies: bodies, of: bytes, fragmentSize: fragmentSize, jobDigest: fragmenter.jobDigest)
    }

    @Test(arguments: sizes)
    func fromAFileThroughOneReusedBuffer(size: Int, fragmentSize: Int) throws {
        let bytes = payload(size, seed: UInt64(size))
        let temp = try TemporaryFile(contents: bytes)
        let file = try PayloadFile(path: temp.path)
        #expect(file.size == UInt64(size))
        var fragmenter = try Fragmenter(jobID: .random(), totalLength: file.size, fragmentSize: fragmentSize)
        // One buffer for every fragment, as a client reuses its outgoing message buffer.
        var buffer = [UInt8](repeating: 0, count: fragmentSize)
        var headers: [FragmentHeader] = []
        var bodies: [[UInt8]] = []
        try buffer.withUnsafeMutableBytes { raw in
            while let header = try fragmenter.next(from: file, into: raw) {
                headers.append(header)
                bodies.append(Array(raw[0..<Int(header.length)]))
            }
        }
        expectFragments(headers, bodies: bodies, of: bytes, fragmentSize: fragmentSize, jobDigest: fragmenter.jobDigest)
    }

    @Test func straightIntoTheMessageBufferAfterThePrefix() throws {
        let bytes = payload(10_000)
        let temp = try TemporaryFile(contents: bytes)
        let file = try PayloadFile(path: temp.path)
        let service: ServiceName = "upload"
        var fragmenter = try Fragmenter(jobID: .random(), totalLength: file.size, fragmentSize: smallFragment)
        let bodyOffset = Fragment.bodyOffset(serviceLength: service.byteCount)
        var message = [UInt8](repeating: 0, count: bodyOffset + smallFragment)
        var gathered: [UInt8] = []
        try message.withUnsafeMutableBytes { raw in
            let bodyArea = UnsafeMutableRawBufferPointer(rebasing: raw[bodyOffset...])
            while let header = try fragmenter.next(from: file, into: bodyArea) {
                Fragment.write(into: raw, command: .submit, tag: 0, service: service, header: header)
                let sent = UnsafeRawBufferPointer(rebasing: raw[0..<(bodyOffset + Int(header.length))])
                let view = try #require(try Message.parse(sent).fragment)
                #expect(view.header == header)
                #expect(SHA256.hash(view.body) == header.digest)
                gathered += view.body
            }
        }
        #expect(gathered == bytes)
    }

    @Test func shortReadsFromAnyReader() throws {
        let bytes = payload(3 * smallFragment + 5)
        var reference = try Fragmenter(jobID: JobID(high: 1, low: 1), totalLength: UInt64(bytes.count), fragmentSize: smallFragment)
        var expected: [FragmentHeader] = []
        try bytes.withUnsafeBytes { raw in
            while let (header, _) = try reference.next(in: raw) { expected.append(header) }
        }
        var fragmenter = try Fragmenter(jobID: JobID(high: 1, low: 1), totalLength: UInt64(bytes.count), fragmentSize: smallFragment)
        var position = 0
        var buffer = [UInt8](repeating: 0, count: smallFragment)
        var headers: [FragmentHeader] = []
        try buffer.withUnsafeMutableBytes { raw in
            // At most 7 bytes per call, like a slow pipe.
            while let header = try fragmenter.next(into: raw, fill: { destination in
                let n = min(7, destination.count, bytes.count - position)
                for i in 0..<n { destination[i] = bytes[position + i] }
                position += n
                return n
            }) {
                headers.append(header)
            }
        }
        #expect(headers == expected)
        #expect(fragmenter.jobDigest == reference.jobDigest)
    }

    @Test func aFileThatShrinksWhileReadFails() throws {
        let temp = try TemporaryFile(contents: payload(3 * smallFragment))
        let file = try PayloadFile(path: temp.path)
        var fragmenter = try Fragmenter(jobID: .random(), totalLength: file.size, fragmentSize: smallFragment)
        var buffer = [UInt8](repeating: 0, count: smallFragment)
        try buffer.withUnsafeMutableBytes { raw in
            _ = try fragmenter.next(from: file, into: raw)
            try temp.truncate(to: smallFragment + 100)
            #expect { try fragmenter.next(from: file, into: raw) } throws: { error in
                let error = error as? PipelineError
                return error?.code == .sourceShrank && error?.index == 1 && error?.actual == UInt64(smallFragment + 100)
                    && error?.path == temp.path
            }
        }
        #expect(fragmenter.nextIndex == 1)
        #expect(fragmenter.jobDigest == nil)
    }

    @Test func aFileThatGrowsWhileReadFailsBeforeItsLastFragment() throws {
        let temp = try TemporaryFile(contents: payload(3 * smallFragment))
        let file = try PayloadFile(path: temp.path)
        var fragmenter = try Fragmenter(jobID: .random(), totalLength: file.size, fragmentSize: smallFragment)
        var buffer = [UInt8](repeating: 0, count: smallFragment)
        try buffer.withUnsafeMutableBytes { raw in
            _ = try fragmenter.next(from: file, into: raw)
            try temp.append([1, 2, 3])
            _ = try fragmenter.next(from: file, into: raw)
            #expect { try fragmenter.next(from: file, into: raw) } throws: { error in
                (error as? PipelineError)?.code == .sourceGrew
            }
        }
        // The last fragment was never produced, so the job cannot complete short or long.
        #expect(fragmenter.nextIndex == 2)
        #expect(!fragmenter.isFinished)
    }

    @Test func anEmptyFileThatGrowsFails() throws {
        let temp = try TemporaryFile(contents: [])
        let file = try PayloadFile(path: temp.path)
        var fragmenter = try Fragmenter(jobID: .random(), totalLength: file.size)
        try temp.append([9])
        var buffer = [UInt8](repeating: 0, count: 16)
        _ = buffer.withUnsafeMutableBytes { raw in
            #expect { try fragmenter.next(from: file, into: raw) } throws: { error in
                (error as? PipelineError)?.code == .sourceGrew
            }
        }
    }

    @Test func onlyRegularFiles() throws {
        #expect { _ = try PayloadFile(path: "/dev/null") } throws: { error in
            (error as? PipelineError)?.code == .notRegularFile
        }
        #expect { _ = try PayloadFile(path: "/tmp") } throws: { error in
            (error as? PipelineError)?.code == .notRegularFile
        }
        #expect { _ = try PayloadFile(path: "/nonexistent/smq-payload") } throws: { error in
            let error = error as? PipelineError
            return error?.code == .openFailed && error?.errno == ENOENT
        }
        var fds: [Int32] = [0, 0]
        try #require(pipe(&fds) == 0)
        defer { close(fds[1]) }
        #expect { _ = try PayloadFile(adopting: fds[0]) } throws: { error in
            (error as? PipelineError)?.code == .notRegularFile
        }
    }

    @Test func anAdoptedDescriptorCountsFromItsPosition() throws {
        let temp = try TemporaryFile(contents: payload(100))
        let fd = open(temp.path, O_RDONLY)
        try #require(fd >= 0)
        try #require(lseek(fd, 30, SEEK_SET) == 30)
        let file = try PayloadFile(adopting: fd)
        #expect(file.size == 70)
    }

    @Test func fragmentSizeLimits() throws {
        for size in [0, -1, ProtocolLimits.defaultMaxFragment + 1] {
            #expect { try Fragmenter(jobID: .random(), totalLength: 10, fragmentSize: size) } throws: { error in
                (error as? PipelineError)?.code == .invalidFragmentSize
            }
        }
        #expect(throws: Never.self) { try Fragmenter(jobID: .random(), totalLength: 10, fragmentSize: ProtocolLimits.defaultMaxFragment) }
        #expect(throws: Never.self) { try Fragmenter(jobID: .random(), totalLength: 10, fragmentSize: 1) }
        #expect { try Fragmenter(jobID: .random(), totalLength: 1 << 33, fragmentSize: 1) } throws: { error in
            (error as? PipelineError)?.code == .tooManyFragments
        }
        let largest = try Fragmenter(jobID: .random(), totalLength: UInt64(UInt32.max), fragmentSize: 1)
        #expect(largest.count == UInt32.max)
    }

    @Test func wrongSizedInputIsRefused() throws {
        var fragmenter = try Fragmenter(jobID: .random(), totalLength: 10, fragmentSize: 4)
        let short = [UInt8](repeating: 0, count: 9)
        short.withUnsafeBytes { raw in
            #expect { try fragmenter.next(in: raw) } throws: { error in
                (error as? PipelineError)?.code == .payloadLengthMismatch
            }
            #expect { try fragmenter.header(forNextBody: UnsafeRawBufferPointer(rebasing: raw[0..<3])) } throws: { error in
                (error as? PipelineError)?.code == .payloadLengthMismatch
            }
        }
        #expect(fragmenter.range(ofFragment: 2) == 8..<10)
        var done = try Fragmenter(jobID: .random(), totalLength: 0)
        let header = try [UInt8]().withUnsafeBytes { try done.header(forNextBody: $0) }
        #expect(header.length == 0 && header.isLast && header.count == 1 && header.digest == SHA256.hash([]))
        _ = [UInt8]().withUnsafeBytes { raw in
            #expect { try done.header(forNextBody: raw) } throws: { error in
                (error as? PipelineError)?.code == .alreadyFinished
            }
        }
    }
}

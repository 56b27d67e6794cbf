import PropertyBased
import SMQProtocol
import Testing

@Suite("SHA-256")
struct SHA256Tests {
    // FIPS 180-2 known answers: they pin the OpenSSL one-shot the other tests use as their oracle.
    @Test(arguments: [
        ("", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        ("abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"),
        (
            "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"
        ),
    ])
    func knownAnswers(input: String, hex: String) throws {
        let expected = try #require(Digest(hex: hex))
        #expect(SHA256.hash(Array(input.utf8)) == expected)
        #expect(SHA256.hash(Array(input.utf8)).description == hex)
        var hasher = SHA256()
        for byte in input.utf8 {
            withUnsafeBytes(of: byte) { hasher.update($0) }
        }
        #expect(hasher.finalize() == expected)
    }

    @Test func millionAs() {
        let input = [UInt8](repeating: UInt8(ascii: "a"), count: 1_000_000)
        #expect(SHA256.hash(input).description == "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0")
    }

    @Test func incrementalMatchesOneShotAtAnySplit() async {
        await propertyCheck(
            input: Gen<UInt8>.value(in: 0...255).array(of: 0...3000), Gen.int(in: 0...3000), Gen.int(in: 0...3000)
        ) { bytes, a, b in
            let cut1 = min(a, bytes.count)
            let cut2 = max(cut1, min(b, bytes.count))
            var hasher = SHA256()
            bytes.withUnsafeBytes { raw in
                hasher.update(UnsafeRawBufferPointer(rebasing: raw[0..<cut1]))
                hasher.update(UnsafeRawBufferPointer(rebasing: raw[cut1..<cut2]))
                hasher.update(UnsafeRawBufferPointer(rebasing: raw[cut2...]))
            }
            #expect(hasher.finalize() == SHA256.hash(bytes))
        }
    }

    @Test func finalizeResetsForReuse() {
        var hasher = SHA256()
        let abc = Array("abc".utf8)
        abc.withUnsafeBytes { hasher.update($0) }
        let first = hasher.finalize()
        abc.withUnsafeBytes { hasher.update($0) }
        #expect(hasher.finalize() == first)
        #expect(hasher.finalize() == SHA256.hash([]))
        #expect(abc.withUnsafeBytes { hasher.digest(of: $0) } == first)
        [UInt8]([1, 2, 3]).withUnsafeBytes { hasher.update($0) }
        hasher.reset()
        #expect(hasher.finalize() == SHA256.hash([]))
    }

    @Test func copiesAreIndependent() {
        var a = SHA256()
        Array("ab".utf8).withUnsafeBytes { a.update($0) }
        var b = a
        Array("c".utf8).withUnsafeBytes { a.update($0) }
        Array("x".utf8).withUnsafeBytes { b.update($0) }
        #expect(a.finalize() == SHA256.hash(Array("abc".utf8)))
        #expect(b.finalize() == SHA256.hash(Array("abx".utf8)))
    }

    @Test func digestOfDigestsIsTheJobDigest() {
        let parts = [SHA256.hash([1]), SHA256.hash([2]), SHA256.hash([3])]
        var hasher = SHA256()
        for part in parts { hasher.update(part) }
        #expect(hasher.finalize() == SHA256.hash(parts.flatMap(\.bytes)))
    }

    @Test func digestBytesRoundTrip() throws {
        let digest = SHA256.hash(Array("round trip".utf8))
        var buffer = [UInt8](repeating: 0xEE, count: 40)
        buffer.withUnsafeMutableBytes { digest.write(to: $0, at: 5) }
        #expect(buffer[0..<5].allSatisfy { $0 == 0xEE } && buffer[37...].allSatisfy { $0 == 0xEE })
        #expect(Array(buffer[5..<37]) == digest.bytes)
        #expect(buffer.withUnsafeBytes { Digest(loadingFrom: $0, at: 5) } == digest)
        #expect(Digest(bytes: digest.bytes) == digest)
        #expect(Digest(hex: digest.description.uppercased()) == digest)
        #expect(Digest(hex: "00") == nil)
        #expect(Digest(bytes: [1, 2, 3]) == nil)
        #expect(Set([digest, digest, Digest.zero]).count == 2)
    }
}

import CZlib

/// zlib's inflate over caller-supplied input: gzip (multi-member) or raw deflate (zip).
final class Inflater {
    enum Format {
        /// gzip members, one after another (RFC 1952).
        case gzip
        /// Raw deflate (RFC 1951), as zip stores it.
        case raw
    }

    private var stream = z_stream()
    private let format: Format
    private(set) var finished = false

    init(_ format: Format) throws {
        self.format = format
        let result = cloudscan_inflate_init2(&stream, format == .gzip ? 16 + MAX_WBITS : -MAX_WBITS)
        guard result == Z_OK else { throw ArchiveError(.corrupt, "inflate could not start (zlib \(result))") }
    }

    deinit { inflateEnd(&stream) }

    /// Inflates `input` (all of it is consumed), handing output to `sink` in pieces.
    func inflate(_ input: [UInt8], sink: ([UInt8]) throws -> Void) throws {
        guard !input.isEmpty else { return }
        var output = [UInt8](repeating: 0, count: 64 * 1024)
        try input.withUnsafeBufferPointer { inputBuffer in
            var consumed = 0
            while consumed < inputBuffer.count {
                if finished {
                    // Another gzip member follows; raw deflate has exactly one stream.
                    guard format == .gzip else { return }
                    inflateReset(&stream)
                    finished = false
                }
                stream.next_in = UnsafeMutablePointer(mutating: inputBuffer.baseAddress! + consumed)
                stream.avail_in = uInt(inputBuffer.count - consumed)
                repeat {
                    let produced: Int = try output.withUnsafeMutableBufferPointer { outputBuffer in
                        stream.next_out = outputBuffer.baseAddress
                        stream.avail_out = uInt(outputBuffer.count)
                        let result = CZlib.inflate(&stream, Z_NO_FLUSH)
                        switch result {
                        case Z_OK, Z_BUF_ERROR: break
                        case Z_STREAM_END: finished = true
                        default:
                            let message = stream.msg.map { String(cString: $0) } ?? "zlib \(result)"
                            throw ArchiveError(.corrupt, "compressed data is damaged: \(message)")
                        }
                        return outputBuffer.count - Int(stream.avail_out)
                    }
                    if produced > 0 { try sink(Array(output[0..<produced])) }
                    if produced == 0 && stream.avail_in > 0 && !finished {
                        throw ArchiveError(.corrupt, "compressed data is damaged: no progress")
                    }
                } while stream.avail_out == 0 && !finished
                consumed = inputBuffer.count - Int(stream.avail_in)
            }
        }
    }
}

/// CRC-32 as zip records it.
func crc32Update(_ crc: UInt32, _ bytes: [UInt8]) -> UInt32 {
    bytes.withUnsafeBufferPointer { buffer in
        UInt32(CZlib.crc32(uLong(crc), buffer.baseAddress, uInt(buffer.count)))
    }
}

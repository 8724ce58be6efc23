/// Writes rows in COPY's text format (tab-separated, `\N` for NULL), or bytes of its binary format,
/// and sends them to the server in chunks. Handed to the body of ``PostgresConnection/copyFrom(_:_:)``.
public struct PostgresCopyWriter {
    private var buffer: [UInt8] = []
    private let send: ([UInt8]) throws -> Void
    /// Bytes buffered before a chunk is sent.
    static let chunkSize = 256 * 1024
    /// Rows written so far.
    public private(set) var rowsWritten = 0

    init(send: @escaping ([UInt8]) throws -> Void) {
        self.send = send
        buffer.reserveCapacity(Self.chunkSize + 4096)
    }

    /// Writes one row; nil fields are NULL.
    public mutating func writeRow(_ fields: [(any PostgresEncodable)?]) throws {
        for (index, field) in fields.enumerated() {
            if index > 0 { buffer.append(0x09) }
            if let field { append(field) } else { buffer.append(contentsOf: [0x5C, 0x4E]) }
        }
        buffer.append(0x0A)
        rowsWritten += 1
        if buffer.count >= Self.chunkSize { try flush() }
    }

    /// Writes text that is already in COPY's text format (whole rows, each ending in a newline).
    public mutating func writeRaw(_ text: String) throws {
        buffer.append(contentsOf: text.utf8)
        if buffer.count >= Self.chunkSize { try flush() }
    }

    /// Writes bytes that are already in COPY's text format (whole rows, each ending in a newline).
    public mutating func writeRaw<Bytes: Sequence>(bytes: Bytes) throws where Bytes.Element == UInt8 {
        buffer.append(contentsOf: bytes)
        if buffer.count >= Self.chunkSize { try flush() }
    }

    /// Appends bytes built in place — rows of `COPY … (FORMAT binary)`, whose header and trailer
    /// are the caller's too — and sends a chunk once enough is buffered.
    public mutating func writeBinary(rows: Int = 1, _ build: (inout [UInt8]) -> Void) throws {
        build(&buffer)
        rowsWritten += rows
        if buffer.count >= Self.chunkSize { try flush() }
    }

    /// A writer whose chunks go to `sink` instead of a server (to prepare COPY files).
    public static func forFile(_ sink: @escaping ([UInt8]) throws -> Void) -> PostgresCopyWriter {
        PostgresCopyWriter(send: sink)
    }

    /// Sends what is buffered.
    public mutating func flush() throws {
        guard !buffer.isEmpty else { return }
        try send(buffer)
        buffer.removeAll(keepingCapacity: true)
    }

    private mutating func append<T: PostgresEncodable>(_ field: T) {
        guard T.postgresTextMayNeedEscaping else {
            field.appendPostgresText(to: &buffer)
            return
        }
        let start = buffer.count
        field.appendPostgresText(to: &buffer)
        // Most text needs no escaping: scan what was appended, and only rewrite it if it must.
        var needsEscaping = false
        for index in start..<buffer.count {
            let byte = buffer[index]
            if byte == 0x5C || byte == 0x09 || byte == 0x0A || byte == 0x0D {
                needsEscaping = true
                break
            }
        }
        guard needsEscaping else { return }
        let raw = Array(buffer[start...])
        buffer.removeSubrange(start...)
        appendEscaped(raw)
    }

    private mutating func appendEscaped(_ bytes: [UInt8]) {
        for byte in bytes {
            switch byte {
            case 0x5C: buffer.append(contentsOf: [0x5C, 0x5C])  // backslash
            case 0x09: buffer.append(contentsOf: [0x5C, 0x74])  // \t
            case 0x0A: buffer.append(contentsOf: [0x5C, 0x6E])  // \n
            case 0x0D: buffer.append(contentsOf: [0x5C, 0x72])  // \r
            default: buffer.append(byte)
            }
        }
    }
}

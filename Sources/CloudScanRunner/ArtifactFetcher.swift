import CloudScanCore
import CloudScanHTTP
import Crypto
import Foundation

/// Brings the scan's artifact to a local file: `file://` is read in place, http(s) is downloaded
/// through libcurl with a size cap and a time limit; the SHA-256 is checked when the scan has one.
public struct ArtifactFetcher: Sendable {
    public struct FetchError: Error, CustomStringConvertible, Sendable {
        /// `artifact_unavailable`, `artifact_too_large`, `artifact_checksum_mismatch`.
        public var reason: String
        public var message: String
        public var description: String { "\(reason): \(message)" }
        /// What a caller learns of any artifact that could not be had: missing, unreadable,
        /// unreachable host, refused connection or an error status all read the same. The detail
        /// goes to the runner's log only (``detail``).
        public static let unavailable = FetchError(
            reason: "artifact_unavailable", message: "the artifact could not be fetched")
        /// For the log, never for the report.
        public var detail: String?
    }

    public var maximumBytes: Int
    public var timeout: Duration
    let http: CurlHTTPClient

    public init(maximumBytes: Int = 512 << 20, timeout: Duration = .seconds(300), http: CurlHTTPClient = .init()) {
        self.maximumBytes = maximumBytes
        self.timeout = timeout
        self.http = http
    }

    /// The local path of the artifact (downloaded into `directory` when remote).
    public func fetch(url: String, sha256: String?, into directory: String) async throws -> String {
        let path: String
        if url.hasPrefix("file://") {
            // The same one message whether the path is missing, unreadable, a directory or
            // clean-looking but odd: a reason must not tell whether a path exists.
            guard let clean = ArtifactPolicy.cleanFilePath(url),
                let attributes = try? FileManager.default.attributesOfItem(atPath: clean),
                attributes[.type] as? FileAttributeType == .typeRegular,
                FileManager.default.isReadableFile(atPath: clean)
            else { throw FetchError.unavailable }
            path = clean
            let size = attributes[.size] as? Int ?? 0
            guard size <= maximumBytes else {
                var failure = FetchError.unavailable
                failure.detail = "\(size) bytes, over \(maximumBytes)"
                throw failure
            }
        } else if url.hasPrefix("https://") || url.hasPrefix("http://") {
            path = directory + "/artifact"
            try await download(url, to: path)
        } else {
            throw FetchError.unavailable
        }
        if let sha256 {
            let actual = try Self.sha256(path: path)
            guard actual == sha256.lowercased() else {
                // Never the actual digest (it would tell what a URL or host path holds), and for a
                // local file not even that it exists.
                var failure =
                    url.hasPrefix("file://")
                    ? FetchError.unavailable
                    : FetchError(
                        reason: "artifact_checksum_mismatch", message: "the artifact's sha256 is not the scan's")
                failure.detail = "sha256 is \(actual), the scan expects \(sha256)"
                throw failure
            }
        }
        return path
    }

    private func download(_ url: String, to path: String) async throws {
        guard FileManager.default.createFile(atPath: path, contents: nil),
            let handle = FileHandle(forWritingAtPath: path)
        else { throw FetchError(reason: "artifact_unavailable", message: "the work directory is not writable") }
        defer { try? handle.close() }
        let limit = maximumBytes
        let request = HTTPRequest(url: url, timeout: timeout, maximumResponseBytes: limit)
        let redacted = url.split(separator: "?").first.map(String.init) ?? url
        try await withThrowingTaskGroup(of: Void.self) { group in
            group.addTask {
                let response: HTTPStreamingResponse
                do {
                    response = try await http.stream(request)
                } catch {
                    var failure = FetchError.unavailable
                    failure.detail = "\(redacted): \(error)"
                    throw failure
                }
                guard response.status == 200 else {
                    var failure = FetchError.unavailable
                    failure.detail = "\(redacted) answered \(response.status)"
                    throw failure
                }
                if let length = response.header("content-length").flatMap(Int.init), length > limit {
                    throw FetchError(reason: "artifact_too_large", message: "\(length) bytes, over \(limit)")
                }
                var total = 0
                for try await chunk in response.body {
                    total += chunk.count
                    guard total <= limit else {
                        throw FetchError(reason: "artifact_too_large", message: "over \(limit) bytes")
                    }
                    try handle.write(contentsOf: chunk)
                }
            }
            group.addTask {
                try await Task.sleep(for: timeout)
                var failure = FetchError.unavailable
                failure.detail = "\(redacted): no complete answer in \(timeout)"
                throw failure
            }
            try await group.next()
            group.cancelAll()
        }
    }

    static func sha256(path: String) throws -> String {
        guard let handle = FileHandle(forReadingAtPath: path) else {
            throw FetchError.unavailable
        }
        defer { try? handle.close() }
        var hasher = SHA256()
        while let data = try handle.read(upToCount: 1 << 20), !data.isEmpty { hasher.update(data: data) }
        return hasher.finalize().map { String(format: "%02x", $0) }.joined()
    }
}

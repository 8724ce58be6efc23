internal import CCurl
import Dispatch
import Foundation
import Synchronization

/// An outbound HTTP request (Kubernetes API, storage service, webhooks, artifact downloads).
public struct HTTPRequest: Sendable {
    public var method: String
    public var url: String
    /// Header fields in order; names are sent as given.
    public var headers: [(String, String)]
    public var body: [UInt8]?
    /// Bound on the whole exchange.
    public var timeout: Duration
    /// Bound on connecting.
    public var connectTimeout: Duration
    /// Responses larger than this fail with ``HTTPClientError/Code/responseTooLarge``.
    public var maximumResponseBytes: Int
    /// Addresses pinned for the URL's host, as `HOST:PORT:ADDRESS[,ADDRESS…]` (libcurl's
    /// `CURLOPT_RESOLVE`): the transfer connects only there, whatever DNS answers meanwhile. A
    /// caller that checked where a name points pins what it checked, so rebinding cannot move it.
    public var pinnedAddresses: [String] = []

    public init(
        method: String = "GET", url: String, headers: [(String, String)] = [], body: [UInt8]? = nil,
        timeout: Duration = .seconds(30), connectTimeout: Duration = .seconds(10),
        maximumResponseBytes: Int = 16 << 20
    ) {
        self.method = method
        self.url = url
        self.headers = headers
        self.body = body
        self.timeout = timeout
        self.connectTimeout = connectTimeout
        self.maximumResponseBytes = maximumResponseBytes
    }
}

/// A response: status, header fields (last response of any redirects is not followed) and body.
public struct HTTPResponse: Sendable {
    public var status: Int
    /// Header fields as received, names lowercased.
    public var headers: [(String, String)]
    public var body: [UInt8]

    /// The first value of a header field (case-insensitive name).
    public func header(_ name: String) -> String? {
        let lower = name.lowercased()
        return headers.first { $0.0 == lower }?.1
    }
}

/// A response whose body arrives while it is read (a Kubernetes watch, a large download).
public struct HTTPStreamingResponse: Sendable {
    public var status: Int
    /// Header fields as received, names lowercased.
    public var headers: [(String, String)]
    /// The body in chunks as they arrive; ends when the server ends the response. Dropping the
    /// iteration (or cancelling its task) aborts the transfer.
    public var body: AsyncThrowingStream<[UInt8], any Error>

    /// The first value of a header field (case-insensitive name).
    public func header(_ name: String) -> String? {
        let lower = name.lowercased()
        return headers.first { $0.0 == lower }?.1
    }
}

/// TLS settings shared by every request of a client.
public struct HTTPClientConfiguration: Sendable {
    /// A PEM bundle of trusted CAs (file, or the PEM itself); neither uses the system store.
    public var caFile: String?
    public var caPEM: [UInt8]?
    /// PEM client certificate and key (mutual TLS), as files or in memory.
    public var clientCertificateFile: String?
    public var clientKeyFile: String?
    public var clientCertificatePEM: [UInt8]?
    public var clientKeyPEM: [UInt8]?
    /// Sent as `User-Agent`.
    public var userAgent: String
    /// Idle easy handles kept for reuse; each keeps its connections alive, so requests to the same
    /// server skip the TCP and TLS handshakes.
    public var maximumIdleHandles: Int

    public init(
        caFile: String? = nil, caPEM: [UInt8]? = nil, clientCertificateFile: String? = nil,
        clientKeyFile: String? = nil, clientCertificatePEM: [UInt8]? = nil, clientKeyPEM: [UInt8]? = nil,
        userAgent: String = "cloudscan/0.1.0", maximumIdleHandles: Int = 8
    ) {
        self.caFile = caFile
        self.caPEM = caPEM
        self.clientCertificateFile = clientCertificateFile
        self.clientKeyFile = clientKeyFile
        self.clientCertificatePEM = clientCertificatePEM
        self.clientKeyPEM = clientKeyPEM
        self.userAgent = userAgent
        self.maximumIdleHandles = maximumIdleHandles
    }
}

/// An error from the HTTP client; never includes request bodies or header values.
public struct HTTPClientError: Error, CustomStringConvertible, Sendable {
    public struct Code: RawRepresentable, Hashable, Sendable {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public static let timedOut = Code(rawValue: "timedOut")
        public static let connectionFailed = Code(rawValue: "connectionFailed")
        public static let tls = Code(rawValue: "tls")
        public static let responseTooLarge = Code(rawValue: "responseTooLarge")
        public static let cancelled = Code(rawValue: "cancelled")
        public static let other = Code(rawValue: "other")
    }
    public var code: Code
    public var message: String
    public init(code: Code, message: String) {
        self.code = code
        self.message = message
    }
    public var description: String { "HTTPClientError(code: \(code.rawValue), message: \(message))" }
}

/// HTTP over libcurl's easy interface. Each request runs on a thread of ``BlockingExecutor``
/// (a streamed one on a thread of its own), never on the cooperative pool; TLS peer and host verification are always
/// on. Easy handles are pooled, so their live connections are reused.
public struct CurlHTTPClient: Sendable {
    public let configuration: HTTPClientConfiguration
    private let pool: HandlePool

    private static let globalInit: Void = { _ = curl_global_init(Int(CURL_GLOBAL_DEFAULT)) }()

    public init(configuration: HTTPClientConfiguration = .init()) {
        _ = Self.globalInit
        self.configuration = configuration
        self.pool = HandlePool(maximumIdle: configuration.maximumIdleHandles)
    }

    /// Performs the request.
    public func perform(_ request: HTTPRequest) async throws -> HTTPResponse {
        let configuration = configuration
        let pool = pool
        return try await withCheckedThrowingContinuation { continuation in
            BlockingExecutor.shared.submit {
                continuation.resume(with: Result { try Self.performPooled(request, configuration, pool) })
            }
        }
    }

    /// Starts the request and returns once the response's header has arrived; the body follows
    /// through ``HTTPStreamingResponse/body``. `request.timeout` bounds the whole transfer.
    public func stream(_ request: HTTPRequest) async throws -> HTTPStreamingResponse {
        let configuration = configuration
        let (body, bodyContinuation) = AsyncThrowingStream<[UInt8], any Error>.makeStream()
        let sink = StreamSink(body: bodyContinuation)
        bodyContinuation.onTermination = { [sink] _ in sink.cancelled.store(true, ordering: .relaxed) }
        return try await withTaskCancellationHandler {
            let head: (Int, [(String, String)]) = try await withCheckedThrowingContinuation { continuation in
                sink.head = continuation
                let thread = Thread { Self.performStreaming(request, configuration, sink) }
                thread.name = "cloudscan-http-stream"
                thread.start()
            }
            return HTTPStreamingResponse(status: head.0, headers: head.1, body: body)
        } onCancel: {
            sink.cancelled.store(true, ordering: .relaxed)
        }
    }
}

/// Idle easy handles (each with its connection cache).
private final class HandlePool: Sendable {
    struct Handle: @unchecked Sendable { let raw: UnsafeMutableRawPointer }
    private let idle = Mutex<[Handle]>([])
    let maximumIdle: Int
    init(maximumIdle: Int) { self.maximumIdle = maximumIdle }

    func take() -> Handle? {
        if let handle = idle.withLock({ $0.popLast() }) {
            curl_easy_reset(handle.raw)  // options cleared; live connections kept
            return handle
        }
        return curl_easy_init().map(Handle.init(raw:))
    }

    func give(_ handle: Handle) {
        let kept = idle.withLock { idle in
            guard idle.count < maximumIdle else { return false }
            idle.append(handle)
            return true
        }
        if !kept { curl_easy_cleanup(handle.raw) }
    }

    deinit {
        for handle in idle.withLock({ $0 }) { curl_easy_cleanup(handle.raw) }
    }
}

/// Collects a whole response while libcurl calls back.
private final class Sink {
    var body: [UInt8] = []
    var headerLines: [String] = []
    var limit: Int
    var overflowed = false
    init(limit: Int) { self.limit = limit }
}

/// Passes a streamed response on while libcurl calls back (on the transfer's own thread).
private final class StreamSink: @unchecked Sendable {
    var head: CheckedContinuation<(Int, [(String, String)]), any Error>?
    let body: AsyncThrowingStream<[UInt8], any Error>.Continuation
    var status = 0
    var headerLines: [String] = []
    let cancelled = Atomic<Bool>(false)
    init(body: AsyncThrowingStream<[UInt8], any Error>.Continuation) { self.body = body }

    func resumeHead() {
        guard let head else { return }
        self.head = nil
        head.resume(returning: (status, CurlHTTPClient.parseHeaders(headerLines)))
    }
}

extension CurlHTTPClient {
    static func milliseconds(_ duration: Duration) -> Int {
        Int(duration.components.seconds * 1000 + duration.components.attoseconds / 1_000_000_000_000_000)
    }

    static func parseHeaders(_ lines: [String]) -> [(String, String)] {
        var headers: [(String, String)] = []
        for line in lines {
            guard let colon = line.firstIndex(of: ":") else { continue }
            let name = line[..<colon].lowercased()
            let value = line[line.index(after: colon)...].trimmingCharacters(in: .whitespacesAndNewlines)
            headers.append((name, value))
        }
        return headers
    }

    /// Sets everything but the callbacks. The returned lists must outlive the transfer.
    private static func configure(
        _ handle: UnsafeMutableRawPointer, _ request: HTTPRequest, _ configuration: HTTPClientConfiguration
    ) -> (UnsafeMutablePointer<curl_slist>?, UnsafeMutablePointer<curl_slist>?) {
        var headerList: UnsafeMutablePointer<curl_slist>?
        for (name, value) in request.headers { headerList = curl_slist_append(headerList, "\(name): \(value)") }
        // Never send `Expect: 100-continue` (an extra round trip on every POST).
        headerList = curl_slist_append(headerList, "Expect:")

        func set(_ option: CURLoption, _ value: String) {
            _ = value.withCString { cloudscan_curl_setopt_ptr(handle, option, $0) }
        }
        func blob(_ option: CURLoption, _ value: [UInt8]) {
            _ = value.withUnsafeBytes { cloudscan_curl_setopt_blob(handle, option, $0.baseAddress, $0.count) }
        }
        set(CURLOPT_URL, request.url)
        set(CURLOPT_CUSTOMREQUEST, request.method)
        set(CURLOPT_USERAGENT, configuration.userAgent)
        if let ca = configuration.caFile { set(CURLOPT_CAINFO, ca) }
        if let ca = configuration.caPEM { blob(CURLOPT_CAINFO_BLOB, ca) }
        if let cert = configuration.clientCertificateFile { set(CURLOPT_SSLCERT, cert) }
        if let key = configuration.clientKeyFile { set(CURLOPT_SSLKEY, key) }
        if let cert = configuration.clientCertificatePEM { blob(CURLOPT_SSLCERT_BLOB, cert) }
        if let key = configuration.clientKeyPEM { blob(CURLOPT_SSLKEY_BLOB, key) }
        _ = cloudscan_curl_setopt_long(handle, CURLOPT_NOSIGNAL, 1)
        _ = cloudscan_curl_setopt_long(handle, CURLOPT_SSL_VERIFYPEER, 1)
        _ = cloudscan_curl_setopt_long(handle, CURLOPT_SSL_VERIFYHOST, 2)
        _ = cloudscan_curl_setopt_long(handle, CURLOPT_TIMEOUT_MS, milliseconds(request.timeout))
        _ = cloudscan_curl_setopt_long(handle, CURLOPT_CONNECTTIMEOUT_MS, milliseconds(request.connectTimeout))
        _ = "http,https".withCString { cloudscan_curl_setopt_ptr(handle, CURLOPT_PROTOCOLS_STR, $0) }
        _ = cloudscan_curl_setopt_ptr(handle, CURLOPT_HTTPHEADER, UnsafeRawPointer(headerList))
        if let body = request.body {
            _ = cloudscan_curl_setopt_off(handle, CURLOPT_POSTFIELDSIZE_LARGE, curl_off_t(body.count))
            _ = body.withUnsafeBytes { cloudscan_curl_setopt_ptr(handle, CURLOPT_COPYPOSTFIELDS, $0.baseAddress) }
        }
        // Redirects are never followed (a 3xx is the answer), and a pooled handle's pins from an
        // earlier request are replaced, never inherited.
        _ = cloudscan_curl_setopt_long(handle, CURLOPT_FOLLOWLOCATION, 0)
        var resolveList: UnsafeMutablePointer<curl_slist>?
        for entry in request.pinnedAddresses { resolveList = curl_slist_append(resolveList, entry) }
        _ = cloudscan_curl_setopt_ptr(handle, CURLOPT_RESOLVE, UnsafeRawPointer(resolveList))
        if !request.pinnedAddresses.isEmpty {
            _ = cloudscan_curl_setopt_long(handle, CURLOPT_FRESH_CONNECT, 1)
            // A proxy from the environment would resolve the name itself and make the pin moot.
            _ = "".withCString { cloudscan_curl_setopt_ptr(handle, CURLOPT_PROXY, $0) }
        } else {
            _ = cloudscan_curl_setopt_long(handle, CURLOPT_FRESH_CONNECT, 0)
            _ = cloudscan_curl_setopt_ptr(handle, CURLOPT_PROXY, nil)
        }
        return (headerList, resolveList)
    }

    private static func error(_ code: CURLcode, overflowed: Bool, cancelled: Bool, limit: Int) -> HTTPClientError {
        let message = String(cString: curl_easy_strerror(code))
        switch code {
        case CURLE_WRITE_ERROR where overflowed:
            return HTTPClientError(code: .responseTooLarge, message: "response exceeds \(limit) bytes")
        case CURLE_ABORTED_BY_CALLBACK where cancelled, CURLE_WRITE_ERROR where cancelled:
            return HTTPClientError(code: .cancelled, message: "the transfer was cancelled")
        case CURLE_OPERATION_TIMEDOUT: return HTTPClientError(code: .timedOut, message: message)
        case CURLE_COULDNT_CONNECT, CURLE_COULDNT_RESOLVE_HOST:
            return HTTPClientError(code: .connectionFailed, message: message)
        case CURLE_SSL_CONNECT_ERROR, CURLE_PEER_FAILED_VERIFICATION, CURLE_SSL_CACERT_BADFILE, CURLE_SSL_CERTPROBLEM:
            return HTTPClientError(code: .tls, message: message)
        default: return HTTPClientError(code: .other, message: message)
        }
    }

    private static func performPooled(
        _ request: HTTPRequest, _ configuration: HTTPClientConfiguration, _ pool: HandlePool
    ) throws -> HTTPResponse {
        guard let pooled = pool.take() else {
            throw HTTPClientError(code: .other, message: "curl_easy_init failed")
        }
        let handle = pooled.raw
        var reusable = false
        defer { if reusable { pool.give(pooled) } else { curl_easy_cleanup(handle) } }
        let sink = Sink(limit: request.maximumResponseBytes)
        let sinkPointer = Unmanaged.passUnretained(sink).toOpaque()
        let (headerList, resolveList) = configure(handle, request, configuration)
        defer {
            curl_slist_free_all(headerList)
            curl_slist_free_all(resolveList)
        }
        _ = cloudscan_curl_setopt_write(handle) { data, size, count, userdata in
            let sink = Unmanaged<Sink>.fromOpaque(userdata!).takeUnretainedValue()
            let length = size * count
            if sink.body.count + length > sink.limit {
                sink.overflowed = true
                return 0
            }
            sink.body.append(contentsOf: UnsafeRawBufferPointer(start: data, count: length))
            return length
        }
        _ = cloudscan_curl_setopt_ptr(handle, CURLOPT_WRITEDATA, sinkPointer)
        _ = cloudscan_curl_setopt_header(handle) { data, size, count, userdata in
            let sink = Unmanaged<Sink>.fromOpaque(userdata!).takeUnretainedValue()
            let length = size * count
            let line = String(decoding: UnsafeRawBufferPointer(start: data, count: length), as: UTF8.self)
            if line.hasPrefix("HTTP/") { sink.headerLines.removeAll() }  // a new response (e.g. after 100)
            sink.headerLines.append(line)
            return length
        }
        _ = cloudscan_curl_setopt_ptr(handle, CURLOPT_HEADERDATA, sinkPointer)

        let code = curl_easy_perform(handle)
        guard code == CURLE_OK else {
            throw error(code, overflowed: sink.overflowed, cancelled: false, limit: request.maximumResponseBytes)
        }
        reusable = true
        var status = 0
        _ = cloudscan_curl_getinfo_long(handle, CURLINFO_RESPONSE_CODE, &status)
        return HTTPResponse(status: status, headers: parseHeaders(sink.headerLines), body: sink.body)
    }

    /// Runs on the transfer's own thread until the response ends, fails or is cancelled.
    private static func performStreaming(
        _ request: HTTPRequest, _ configuration: HTTPClientConfiguration, _ sink: StreamSink
    ) {
        guard let handle = curl_easy_init() else {
            sink.head?.resume(throwing: HTTPClientError(code: .other, message: "curl_easy_init failed"))
            sink.head = nil
            sink.body.finish()
            return
        }
        defer { curl_easy_cleanup(handle) }
        let sinkPointer = Unmanaged.passUnretained(sink).toOpaque()
        let (headerList, resolveList) = configure(handle, request, configuration)
        defer {
            curl_slist_free_all(headerList)
            curl_slist_free_all(resolveList)
        }
        _ = cloudscan_curl_setopt_write(handle) { data, size, count, userdata in
            let sink = Unmanaged<StreamSink>.fromOpaque(userdata!).takeUnretainedValue()
            let length = size * count
            if sink.cancelled.load(ordering: .relaxed) { return 0 }
            sink.resumeHead()
            sink.body.yield(Array(UnsafeRawBufferPointer(start: data, count: length)))
            return length
        }
        _ = cloudscan_curl_setopt_ptr(handle, CURLOPT_WRITEDATA, sinkPointer)
        _ = cloudscan_curl_setopt_header(handle) { data, size, count, userdata in
            let sink = Unmanaged<StreamSink>.fromOpaque(userdata!).takeUnretainedValue()
            let length = size * count
            let line = String(decoding: UnsafeRawBufferPointer(start: data, count: length), as: UTF8.self)
            if line.hasPrefix("HTTP/") {
                sink.headerLines.removeAll()
                sink.status = Int(line.split(separator: " ").dropFirst().first ?? "") ?? 0
            } else if line == "\r\n" || line == "\n" {
                // The header is complete; an interim 1xx response is followed by the real one.
                if !(100..<200).contains(sink.status) { sink.resumeHead() }
            } else {
                sink.headerLines.append(line)
            }
            return length
        }
        _ = cloudscan_curl_setopt_ptr(handle, CURLOPT_HEADERDATA, sinkPointer)
        // The progress callback runs at least once a second, also while the stream is idle: the
        // place to notice a cancellation.
        _ = cloudscan_curl_setopt_long(handle, CURLOPT_NOPROGRESS, 0)
        _ = cloudscan_curl_setopt_xferinfo(handle) { userdata, _, _, _, _ in
            let sink = Unmanaged<StreamSink>.fromOpaque(userdata!).takeUnretainedValue()
            return sink.cancelled.load(ordering: .relaxed) ? 1 : 0
        }
        _ = cloudscan_curl_setopt_ptr(handle, CURLOPT_XFERINFODATA, sinkPointer)

        let code = curl_easy_perform(handle)
        if code == CURLE_OK {
            sink.resumeHead()  // a response with no body
            sink.body.finish()
        } else {
            let failure = error(
                code, overflowed: false, cancelled: sink.cancelled.load(ordering: .relaxed), limit: 0)
            if let head = sink.head {
                sink.head = nil
                head.resume(throwing: failure)
            }
            sink.body.finish(throwing: failure)
        }
    }
}

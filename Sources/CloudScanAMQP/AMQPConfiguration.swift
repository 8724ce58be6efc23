import Foundation

/// How to reach the broker.
public struct AMQPConfiguration: Sendable {
    /// TLS settings (amqps). Peer and hostname verification are on unless switched off.
    public struct TLS: Sendable, Hashable {
        /// PEM bundle of CAs to trust.
        public var caFile: String
        /// PEM client certificate and key, for brokers that require one.
        public var certificateFile: String?
        public var keyFile: String?
        public var verifyPeer: Bool
        public var verifyHostname: Bool

        public init(
            caFile: String, certificateFile: String? = nil, keyFile: String? = nil, verifyPeer: Bool = true,
            verifyHostname: Bool = true
        ) {
            self.caFile = caFile
            self.certificateFile = certificateFile
            self.keyFile = keyFile
            self.verifyPeer = verifyPeer
            self.verifyHostname = verifyHostname
        }
    }

    public var host: String
    public var port: Int
    public var virtualHost: String
    public var user: String
    /// A secret: never printed by `description`.
    public var password: String
    /// Requested heartbeat in seconds (rabbitmq-c's default is 0, off).
    public var heartbeatSeconds: Int
    /// Bound on the TCP connect and the AMQP handshake.
    public var connectTimeout: Duration
    /// Bound on a synchronous request (declare, bind, qos, consume, delete).
    public var rpcTimeout: Duration
    /// TLS, or nil for plain TCP.
    public var tls: TLS?

    /// Explicit settings.
    public init(
        host: String = "127.0.0.1", port: Int = 5672, virtualHost: String = "/", user: String = "guest",
        password: String = "guest", heartbeatSeconds: Int = 30, connectTimeout: Duration = .seconds(10),
        rpcTimeout: Duration = .seconds(30), tls: TLS? = nil
    ) {
        self.host = host
        self.port = port
        self.virtualHost = virtualHost
        self.user = user
        self.password = password
        self.heartbeatSeconds = heartbeatSeconds
        self.connectTimeout = connectTimeout
        self.rpcTimeout = rpcTimeout
        self.tls = tls
    }

    /// Parses `amqp://user:password@host:port/vhost` (the vhost percent-encoded; an empty path is "/").
    public init(url text: String) throws {
        guard let components = URLComponents(string: text), components.scheme == "amqp" else {
            throw AMQPError(
                code: .invalidConfiguration, message: "broker URL must look like amqp://user:password@host:port/vhost")
        }
        self.init()
        host = components.host ?? host
        port = components.port ?? 5672
        user = components.user.flatMap { $0.removingPercentEncoding } ?? user
        password = components.password.flatMap { $0.removingPercentEncoding } ?? password
        let path = components.percentEncodedPath
        if path.count > 1 {
            virtualHost = String(path.dropFirst()).removingPercentEncoding ?? String(path.dropFirst())
        }
    }
}

extension AMQPConfiguration: CustomStringConvertible {
    public var description: String {
        "AMQPConfiguration(host: \(host), port: \(port), virtualHost: \(virtualHost), user: \(user), password: <redacted>, "
            + "tls: \(tls == nil ? "off" : "on"))"
    }
}

/// An error from the AMQP module.
public struct AMQPError: Error, CustomStringConvertible, Sendable {
    /// What kind of failure this is.
    public struct Code: RawRepresentable, Hashable, Sendable {
        public var rawValue: String
        public init(rawValue: String) { self.rawValue = rawValue }
        public static let invalidConfiguration = Code(rawValue: "invalidConfiguration")
        public static let connectionFailed = Code(rawValue: "connectionFailed")
        public static let loginFailed = Code(rawValue: "loginFailed")
        /// The connection dropped (socket error, missed heartbeats, broker closed it).
        public static let connectionLost = Code(rawValue: "connectionLost")
        /// The broker closed the channel (e.g. PRECONDITION_FAILED for inequivalent arguments).
        public static let channelClosed = Code(rawValue: "channelClosed")
        public static let protocolError = Code(rawValue: "protocolError")
        /// The broker refused a published message (basic.nack), e.g. a full queue with reject-publish.
        public static let nacked = Code(rawValue: "nacked")
        /// A mandatory message reached no queue (basic.return).
        public static let unroutable = Code(rawValue: "unroutable")
        /// No confirm arrived within the deadline; the message may or may not have been taken.
        public static let confirmTimeout = Code(rawValue: "confirmTimeout")
        /// The broker blocked the connection (resource alarm) beyond the publish deadline.
        public static let blocked = Code(rawValue: "blocked")
        /// Settling a delivery that an earlier connection delivered (its tag is void).
        public static let staleDelivery = Code(rawValue: "staleDelivery")
        /// The publisher or consumer was shut down.
        public static let closed = Code(rawValue: "closed")
    }
    public var code: Code
    public var message: String
    /// The AMQP reply code, when the broker gave one (406, 404, 312, …).
    public var replyCode: Int?
    public init(code: Code, message: String, replyCode: Int? = nil) {
        self.code = code
        self.message = message
        self.replyCode = replyCode
    }
    public var description: String {
        "AMQPError(code: \(code.rawValue)\(replyCode.map { ", replyCode: \($0)" } ?? ""), message: \(message))"
    }
}

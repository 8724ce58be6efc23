/// How to reach PostgreSQL and how each session is set up.
///
/// Anything left nil is left to libpq, which falls back to the standard `PG*` environment
/// variables (PGHOST, PGPORT, PGDATABASE, PGUSER, PGPASSWORD, PGSSLMODE, …) and then its defaults.
public struct PostgresConfiguration: Sendable {
    /// A `postgresql://` URL or a `key=value` conninfo string; explicit fields below override it.
    public var connectionString: String?
    public var host: String?
    public var port: Int?
    public var database: String?
    public var user: String?
    /// A secret: never printed by `description`.
    public var password: String?
    /// libpq's `sslmode` (disable, allow, prefer, require, verify-ca, verify-full).
    public var sslMode: String?
    /// Reported in `pg_stat_activity`.
    public var applicationName: String
    /// Seconds libpq waits for a connection.
    public var connectTimeoutSeconds: Int
    /// Server-side `statement_timeout` for every statement of the session; nil keeps the server's.
    public var statementTimeout: Duration?
    /// A `search_path` for every session (tests use one schema each).
    public var searchPath: String?
    /// Connections the pool may open at most.
    public var maximumConnections: Int

    /// Defaults: libpq's environment and defaults, 10 s connect timeout, 4 connections.
    public init(
        connectionString: String? = nil, host: String? = nil, port: Int? = nil, database: String? = nil,
        user: String? = nil, password: String? = nil, sslMode: String? = nil, applicationName: String = "cloudscan",
        connectTimeoutSeconds: Int = 10, statementTimeout: Duration? = nil, searchPath: String? = nil,
        maximumConnections: Int = 4
    ) {
        self.connectionString = connectionString
        self.host = host
        self.port = port
        self.database = database
        self.user = user
        self.password = password
        self.sslMode = sslMode
        self.applicationName = applicationName
        self.connectTimeoutSeconds = connectTimeoutSeconds
        self.statementTimeout = statementTimeout
        self.searchPath = searchPath
        self.maximumConnections = maximumConnections
    }

    /// Reads `DATABASE_URL` and the seed's DB_HOST, DB_PORT, DB_NAME, DB_USER, DB_PASSWORD, DB_SSLMODE
    /// (and DB_POOL_SIZE for the pool's size);
    /// whatever they leave unset libpq takes from the PG* variables.
    public init(environment: [String: String], applicationName: String = "cloudscan") {
        self.init(applicationName: applicationName)
        connectionString = environment["DATABASE_URL"]
        host = environment["DB_HOST"]
        port = environment["DB_PORT"].flatMap(Int.init)
        database = environment["DB_NAME"]
        user = environment["DB_USER"]
        password = environment["DB_PASSWORD"]
        sslMode = environment["DB_SSLMODE"]
        if let size = environment["DB_POOL_SIZE"].flatMap(Int.init), size > 0 { maximumConnections = size }
    }

    /// The keyword/value pairs for `PQconnectdbParams` (with `expand_dbname` on the first `dbname`).
    var libpqParameters: [(String, String)] {
        var pairs: [(String, String)] = []
        if let connectionString { pairs.append(("dbname", connectionString)) }
        if let host { pairs.append(("host", host)) }
        if let port { pairs.append(("port", String(port))) }
        if let database { pairs.append(("dbname", database)) }
        if let user { pairs.append(("user", user)) }
        if let password { pairs.append(("password", password)) }
        if let sslMode { pairs.append(("sslmode", sslMode)) }
        pairs.append(("application_name", applicationName))
        pairs.append(("connect_timeout", String(connectTimeoutSeconds)))
        pairs.append(("client_encoding", "UTF8"))
        pairs.append(("options", sessionOptions))
        return pairs
    }

    /// `-c` settings every session gets: ISO timestamps in UTC (the decoder relies on them).
    var sessionOptions: String {
        var options = [
            "-c DateStyle=ISO,YMD", "-c TimeZone=UTC", "-c IntervalStyle=iso_8601", "-c client_min_messages=warning",
        ]
        if let statementTimeout {
            let ms =
                statementTimeout.components.seconds * 1000 + statementTimeout.components.attoseconds
                / 1_000_000_000_000_000
            options.append("-c statement_timeout=\(ms)")
        }
        if let searchPath {
            // Spaces and backslashes in an options value are escaped with a backslash.
            let escaped = searchPath.replacing("\\", with: "\\\\").replacing(" ", with: "\\ ")
            options.append("-c search_path=\(escaped)")
        }
        return options.joined(separator: " ")
    }
}

extension PostgresConfiguration: CustomStringConvertible {
    /// Host, port, database and user; the password and connection string are never printed.
    public var description: String {
        "PostgresConfiguration(host: \(host ?? "(libpq)"), port: \(port.map(String.init) ?? "(libpq)"), "
            + "database: \(database ?? "(libpq)"), user: \(user ?? "(libpq)"), "
            + "password: \(password == nil ? "unset" : "<redacted>"), maximumConnections: \(maximumConnections))"
    }
}

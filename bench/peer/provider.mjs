// The peer of the benchmark: node-oidc-provider (npm package oidc-provider,
// version 9) set up for the client credentials grant the way ccserver is.
//
//   node provider.mjs --port 18081 --alg ES256 --format jwt \
//        --client-id ID --client-secret SECRET [--workers N]
//
// With --workers N (N > 1) it is a node:cluster: the primary makes the keys
// and forks N workers that share the port (the way node-oidc-provider is
// deployed on N cores); it prints "ready" once every worker listens.  The
// workers' Map adapters are not shared, so opaque tokens issued by one are
// unknown to the others: the bench uses a cluster for JWTs only.
//
// bench/run copies this file into the temporary folder where it installed
// oidc-provider (an ES module finds its imports from its own folder) and
// runs it with NODE_ENV=production.  It prints one line, "ready <issuer>",
// once it listens on 127.0.0.1:<port>.
//
// Set-up, as issue 6 asks:
// - features.clientCredentials on; devInteractions off (no development
//   pages); a random cookies.keys; our own signing keys in `jwks` (RS256,
//   ES256 and EdDSA, made at start), so no development keys are used.
// - features.resourceIndicators with a default resource, so that a token
//   request with only `scope=read` names a resource server, whose
//   getResourceServerInfo gives accessTokenFormat 'jwt' signed with --alg,
//   or 'opaque' with --format opaque.
// - One static client: client_secret_basic, grant client_credentials,
//   scope 'read write'.
// - features.introspection on (RFC 7662, /token/introspection), a token
//   shown to its own client.  node-oidc-provider refuses to introspect a
//   JWT access token ("Structured JWT Tokens cannot be introspected"), so
//   the bench introspects opaque ones only.
// - Opaque tokens are kept in a Map, the counterpart of ccserver's
//   memory:// store (the built-in development adapter is an LRU of 1,000
//   entries and prints a warning; this one keeps every live token).

import cluster from 'node:cluster';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { parseArgs } from 'node:util';

import Provider from 'oidc-provider';

const { values: opts } = parseArgs({
  options: {
    port: { type: 'string' },
    alg: { type: 'string', default: 'ES256' },
    format: { type: 'string', default: 'jwt' },
    'client-id': { type: 'string' },
    'client-secret': { type: 'string' },
    lifetime: { type: 'string', default: '3600' },
    workers: { type: 'string', default: '1' },
  },
});

const port = Number(opts.port ?? process.env.PEER_PORT);
const alg = opts.alg ?? process.env.PEER_ALG;
const format = opts.format ?? process.env.PEER_FORMAT;
const clientId = opts['client-id'] ?? process.env.PEER_CLIENT_ID;
const clientSecret = opts['client-secret'] ?? process.env.PEER_CLIENT_SECRET;
const lifetime = Number(opts.lifetime);
const workers = Number(opts.workers);

if (!Number.isInteger(port) || port <= 0) throw new Error('--port is required');
if (!['RS256', 'ES256', 'EdDSA'].includes(alg)) throw new Error(`--alg ${alg}: RS256, ES256 or EdDSA`);
if (!['jwt', 'opaque'].includes(format)) throw new Error(`--format ${format}: jwt or opaque`);
if (!clientId || !clientSecret) throw new Error('--client-id and --client-secret are required');
if (!Number.isInteger(workers) || workers < 1) throw new Error('--workers: 1 or more');

const issuer = `http://127.0.0.1:${port}`;
// The resource server every token is for (the audience).
const resource = `${issuer}/api`;

function signingKey(type, options, keyAlg, kid) {
  const { privateKey } = generateKeyPairSync(type, options);
  return { ...privateKey.export({ format: 'jwk' }), alg: keyAlg, use: 'sig', kid };
}

function makeJwks() {
  return {
    keys: [
      signingKey('rsa', { modulusLength: 2048 }, 'RS256', 'rs256'),
      signingKey('ec', { namedCurve: 'P-256' }, 'ES256', 'es256'),
      signingKey('ed25519', {}, 'EdDSA', 'eddsa'),
    ],
  };
}

if (workers > 1 && cluster.isPrimary) {
  // The primary: one set of keys for every worker, which it only forks.
  const env = { PEER_JWKS: JSON.stringify(makeJwks()), PEER_COOKIE_KEY: randomBytes(32).toString('base64url') };
  let listening = 0;
  for (let i = 0; i < workers; i += 1) cluster.fork(env);
  cluster.on('listening', () => {
    listening += 1;
    if (listening === workers) console.log(`ready ${issuer} (${workers} workers)`);
  });
  cluster.on('exit', (worker, code, signal) => {
    if (!stopping) {
      console.error(`peer worker ${worker.process.pid} exited (${signal ?? code})`);
      process.exit(1);
    }
  });
  let stopping = false;
  const stopAll = () => {
    stopping = true;
    for (const worker of Object.values(cluster.workers)) worker.process.kill('SIGTERM');
    setTimeout(() => process.exit(0), 2000).unref();
    cluster.on('exit', () => {
      if (Object.keys(cluster.workers).length === 0) process.exit(0);
    });
  };
  process.on('SIGTERM', stopAll);
  process.on('SIGINT', stopAll);
} else {
  serve(process.env.PEER_JWKS ? JSON.parse(process.env.PEER_JWKS) : makeJwks());
}

function serve(jwks) {

// A production-shaped in-memory adapter: every artifact kept until it
// expires, swept every 10 s.
const storage = new Map();
const now = () => Date.now();

class MapAdapter {
  constructor(model) {
    this.model = model;
  }

  key(id) {
    return `${this.model}:${id}`;
  }

  async upsert(id, payload, expiresIn) {
    const expiresAt = expiresIn ? now() + expiresIn * 1000 : Infinity;
    storage.set(this.key(id), { payload, expiresAt });
  }

  async find(id) {
    const entry = storage.get(this.key(id));
    if (entry === undefined) return undefined;
    if (entry.expiresAt <= now()) {
      storage.delete(this.key(id));
      return undefined;
    }
    return entry.payload;
  }

  async findByUid() {
    return undefined;
  }

  async findByUserCode() {
    return undefined;
  }

  async consume(id) {
    const payload = await this.find(id);
    if (payload) payload.consumed = Math.floor(now() / 1000);
  }

  async destroy(id) {
    storage.delete(this.key(id));
  }

  async revokeByGrantId(grantId) {
    for (const [key, { payload }] of storage) {
      if (payload.grantId === grantId) storage.delete(key);
    }
  }
}

setInterval(() => {
  const t = now();
  for (const [key, { expiresAt }] of storage) {
    if (expiresAt <= t) storage.delete(key);
  }
}, 10_000).unref();

const configuration = {
  adapter: MapAdapter,
  jwks,
  cookies: { keys: [process.env.PEER_COOKIE_KEY ?? randomBytes(32).toString('base64url')] },
  clients: [
    {
      client_id: clientId,
      client_secret: clientSecret,
      grant_types: ['client_credentials'],
      response_types: [],
      redirect_uris: [],
      token_endpoint_auth_method: 'client_secret_basic',
      scope: 'read write',
    },
  ],
  scopes: ['read', 'write'],
  ttl: { ClientCredentials: lifetime },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    // RFC 7662 at /token/introspection: a token is shown to the client it
    // was issued to, as ccserver's default rule does for this bench (and
    // without the default policy's "you SHOULD change it" notice)
    introspection: {
      enabled: true,
      allowedPolicy: async (ctx, client, token) => token.clientId === client.clientId,
    },
    resourceIndicators: {
      enabled: true,
      // A request that names no resource is for this one.
      defaultResource: async () => resource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, resourceIndicator) => {
        if (resourceIndicator !== resource) {
          throw new Provider.errors.InvalidTarget();
        }
        return {
          scope: 'read write',
          audience: resource,
          accessTokenTTL: lifetime,
          accessTokenFormat: format,
          ...(format === 'jwt' ? { jwt: { sign: { alg } } } : {}),
        };
      },
    },
  },
};

const provider = new Provider(issuer, configuration);
provider.on('server_error', (_ctx, error) => {
  console.error('peer server_error:', error);
});
provider.on('grant.error', (_ctx, error) => {
  console.error('peer grant.error:', error.message, error.error_description ?? '');
});

const server = provider.listen(port, '127.0.0.1', () => {
  console.log(`ready ${issuer}`);
});

function stop() {
  server.close(() => process.exit(0));
  server.closeAllConnections?.();
  setTimeout(() => process.exit(0), 2000).unref();
}
process.on('SIGTERM', stop);
process.on('SIGINT', stop);
}

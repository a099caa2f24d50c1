// One client credentials round through a node client library, used as its
// documentation shows, at its defaults: get a token, introspect it, revoke
// it, introspect it again.  Driven by tests/interop/test_node_clients.py.
//
// Input (JSON on stdin): library ("openid-client" or "oauth4webapi"),
// issuer, method (a token_endpoint_auth_method), client_id, and what the
// method needs: client_secret, private_jwk (a private JWK), or cert_pem
// and key_pem (the TLS client certificate); dpop (true for a DPoP-bound
// token); scope.
// Output (JSON on stdout): the token response, the introspection answers
// before and after the revocation.  An error ends the process with
// status 1 and the error on stderr, with the server's answer if it had one.

import * as openid from 'openid-client'
import * as oauth from 'oauth4webapi'
import * as undici from 'undici'

const MTLS = ['tls_client_auth', 'self_signed_tls_client_auth']

async function readInput() {
  const chunks = []
  for await (const chunk of process.stdin) chunks.push(chunk)
  return JSON.parse(Buffer.concat(chunks).toString('utf8'))
}

async function privateKey(jwk) {
  // WebCrypto's own import: both libraries take a CryptoKey
  const algorithm =
    jwk.kty === 'EC'
      ? { name: 'ECDSA', namedCurve: jwk.crv }
      : { name: 'RSASSA-PKCS1-v1_5', hash: 'SHA-256' }
  return crypto.subtle.importKey('jwk', jwk, algorithm, false, ['sign'])
}

function tlsFetch(input) {
  // the libraries' documented way to present a client certificate:
  // undici's fetch with an Agent that holds it
  const agent = new undici.Agent({ connect: { key: input.key_pem, cert: input.cert_pem } })
  return (...args) => undici.fetch(args[0], { ...args[1], dispatcher: agent })
}

async function withOpenidClient(input) {
  const issuer = new URL(input.issuer)
  let config
  if (input.method === 'client_secret_post') {
    // the README's shorthand: a string is the client secret, posted
    config = await openid.discovery(issuer, input.client_id, input.client_secret)
  } else if (input.method === 'client_secret_basic') {
    config = await openid.discovery(
      issuer,
      input.client_id,
      undefined,
      openid.ClientSecretBasic(input.client_secret),
    )
  } else if (input.method === 'client_secret_jwt') {
    config = await openid.discovery(
      issuer,
      input.client_id,
      undefined,
      openid.ClientSecretJwt(input.client_secret),
    )
  } else if (input.method === 'private_key_jwt') {
    const key = await privateKey(input.private_jwk)
    config = await openid.discovery(
      issuer,
      input.client_id,
      undefined,
      openid.PrivateKeyJwt({ key, kid: input.private_jwk.kid }),
    )
  } else if (MTLS.includes(input.method)) {
    config = await openid.discovery(
      issuer,
      input.client_id,
      { use_mtls_endpoint_aliases: true },
      openid.TlsClientAuth(),
    )
    config[openid.customFetch] = tlsFetch(input)
  } else {
    throw new Error(`no such method: ${input.method}`)
  }
  const options = {}
  if (input.dpop) {
    options.DPoP = openid.getDPoPHandle(config, await openid.randomDPoPKeyPair())
  }
  const token = await openid.clientCredentialsGrant(config, { scope: input.scope }, options)
  const introspection = await openid.tokenIntrospection(config, token.access_token)
  await openid.tokenRevocation(config, token.access_token)
  const afterRevocation = await openid.tokenIntrospection(config, token.access_token)
  return { token, introspection, after_revocation: afterRevocation }
}

async function withOauth4webapi(input) {
  const issuer = new URL(input.issuer)
  const as = await oauth.processDiscoveryResponse(issuer, await oauth.discoveryRequest(issuer))
  const client = { client_id: input.client_id }
  const options = {}
  let clientAuth
  if (input.method === 'client_secret_post') {
    clientAuth = oauth.ClientSecretPost(input.client_secret)
  } else if (input.method === 'client_secret_basic') {
    clientAuth = oauth.ClientSecretBasic(input.client_secret)
  } else if (input.method === 'client_secret_jwt') {
    clientAuth = oauth.ClientSecretJwt(input.client_secret)
  } else if (input.method === 'private_key_jwt') {
    const key = await privateKey(input.private_jwk)
    clientAuth = oauth.PrivateKeyJwt({ key, kid: input.private_jwk.kid })
  } else if (MTLS.includes(input.method)) {
    client.use_mtls_endpoint_aliases = true
    clientAuth = oauth.TlsClientAuth()
    options[oauth.customFetch] = tlsFetch(input)
  } else {
    throw new Error(`no such method: ${input.method}`)
  }
  const parameters = new URLSearchParams({ scope: input.scope })
  let tokenOptions = options
  if (input.dpop) {
    const DPoP = oauth.DPoP(client, await oauth.generateKeyPair('ES256'))
    tokenOptions = { ...options, DPoP }
  }
  const request = () =>
    oauth.clientCredentialsGrantRequest(as, client, clientAuth, parameters, tokenOptions)
  let token
  try {
    token = await oauth.processClientCredentialsResponse(as, client, await request())
  } catch (err) {
    // the documented retry: once, with the server's DPoP nonce
    if (!oauth.isDPoPNonceError(err)) throw err
    token = await oauth.processClientCredentialsResponse(as, client, await request())
  }
  const introspect = async () =>
    oauth.processIntrospectionResponse(
      as,
      client,
      await oauth.introspectionRequest(as, client, clientAuth, token.access_token, options),
    )
  const introspection = await introspect()
  await oauth.processRevocationResponse(
    await oauth.revocationRequest(as, client, clientAuth, token.access_token, options),
  )
  return { token, introspection, after_revocation: await introspect() }
}

const LIBRARIES = { 'openid-client': withOpenidClient, oauth4webapi: withOauth4webapi }

async function main() {
  const input = await readInput()
  const run = LIBRARIES[input.library]
  if (run === undefined) throw new Error(`no such library: ${input.library}`)
  process.stdout.write(JSON.stringify(await run(input)) + '\n')
}

main().catch((err) => {
  // what the library knew of the server's answer, for the test's message
  const detail = {
    name: err?.name,
    message: err?.message,
    code: err?.code,
    error: err?.error,
    error_description: err?.error_description,
    status: err?.status,
    cause: err?.cause instanceof Error ? String(err.cause) : err?.cause,
  }
  process.stderr.write(JSON.stringify(detail) + '\n')
  process.exit(1)
})

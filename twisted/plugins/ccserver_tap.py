from twisted.application.service import ServiceMaker

ccserver = ServiceMaker(
    "ccserver",
    "ccserver.tap",
    "An OAuth 2.0 authorization server for machine-to-machine clients.",
    "ccserver",
)

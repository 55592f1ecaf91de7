# Run from this directory with: PYTHONPATH=. twistd -ny embed_twisted_web.tac
from twisted.application.service import Application
from twisted.internet import reactor

from embed_twisted_web import make_service

application = Application("live counter")
make_service(reactor, "tcp:8080").setServiceParent(application)

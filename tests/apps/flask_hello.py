"""A Flask hello app (module = flask_hello:app)."""
from flask import Flask, request

app = Flask(__name__)


@app.route("/")
def hello():
    return "Hello from Flask"


@app.route("/echo", methods=["POST"])
def echo():
    return request.get_data()

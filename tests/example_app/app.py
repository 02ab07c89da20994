"""The application under test: users who write posts, served by FastAPI.

Layers: routes (HTTP) -> ``UserService`` (ends each write with ``commit()``) -> SQL. The
lifespan creates and disposes the engine; ``get_session`` gives each request its own
``AsyncSession``. Tests replace ``get_session`` through ``app.dependency_overrides`` (see
conftest.py), so the service may receive a session the test has already used: it therefore
never calls ``session.begin()`` (notebook 10).
"""

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Annotated

from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import select
from sqlalchemy.engine import URL
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker, create_async_engine
from sqlalchemy.orm import selectinload

from helpers.models import Post, User


class UserCreate(BaseModel):
    name: str = Field(min_length=1, max_length=50)
    email: str = Field(min_length=3, max_length=120)


class PostOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    title: str


class UserOut(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: int
    name: str
    email: str
    posts: list[PostOut]


class UserNotFound(Exception):
    pass


class UserAlreadyExists(Exception):
    pass


class UserService:
    def __init__(self, session: AsyncSession) -> None:
        self.session = session

    async def get(self, user_id: int) -> UserOut:
        user = await self.session.scalar(
            select(User).where(User.id == user_id).options(selectinload(User.posts))
        )
        if user is None:
            raise UserNotFound(f"user {user_id} does not exist")
        return UserOut.model_validate(user)  # a read: nothing to commit

    async def register(self, data: UserCreate, first_post: str | None = None) -> UserOut:
        user = User(name=data.name, email=data.email, posts=[Post(title=first_post)] if first_post else [])
        self.session.add(user)
        try:
            await self.session.flush()  # INSERTs now: ids assigned, constraints checked
            created = UserOut.model_validate(user)  # before commit() expires the objects
            await self.session.commit()  # ends the transaction, whoever began it
        except IntegrityError as exc:
            await self.session.rollback()
            raise UserAlreadyExists(f"{data.name!r} or {data.email!r} is taken") from exc
        return created


async def get_session(request: Request) -> AsyncIterator[AsyncSession]:
    async with request.app.state.sessions() as session:
        yield session


async def get_service(session: Annotated[AsyncSession, Depends(get_session)]) -> UserService:
    return UserService(session)  # async def: a plain def dependency would run in a worker thread


Service = Annotated[UserService, Depends(get_service)]


def create_app(database_url: str | URL) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        engine = create_async_engine(database_url)
        app.state.engine = engine
        app.state.sessions = async_sessionmaker(engine)
        try:
            yield
        finally:
            await engine.dispose()

    app = FastAPI(lifespan=lifespan)

    @app.get("/users/{user_id}")
    async def read_user(user_id: int, service: Service) -> UserOut:
        return await service.get(user_id)

    @app.post("/users", status_code=201)
    async def register(data: UserCreate, service: Service, first_post: str | None = None) -> UserOut:
        return await service.register(data, first_post)

    @app.exception_handler(UserNotFound)
    async def not_found(request: Request, exc: UserNotFound) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(UserAlreadyExists)
    async def conflict(request: Request, exc: UserAlreadyExists) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    return app
